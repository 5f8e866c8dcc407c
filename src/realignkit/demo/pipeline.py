"""The demo's stages: a world trained from scratch loses its safety to a fine-tune, is re-aligned.

Each stage goes through the same Python API a user calls on real models (``finetune``,
``unalign``, ``compute_safety_vector``, every recipe of the method registry, ``evaluate``) and
leaves a normal checkpoint folder behind:

1. ``pretrained``: a small Llama trained from scratch on the old skills and how-to helpfulness;
   ``aligned``: the same, fine-tuned to refuse harmful requests (with benign replay).
2. ``unaligned``: ``aligned`` fine-tuned on harmful requests with compliant answers;
   ``safety-vector``: v = θ_aligned − θ_unaligned.
3. ``finetuned-full`` and ``finetuned-lora``: ``aligned`` fine-tuned on the new skill (with a
   share of everyday benign requests, never safety data); the LoRA one is an adapter.
4. The references (``pretrained``, ``aligned``, ``unaligned``) evaluated with the keyword
   judge on held-out harmful requests (harmfulness), over-refusal probes, and held-out
   prompts of the new and the old skills.
5. Per fine-tune, one `realignkit sweep` (:func:`realignkit.sweep.run_sweep`, its config in
   ``seed-N/sweep-{full,lora}.json``): every recipe of
   :mod:`realignkit.methods.registry` at its defaults (and, with ``--sweep``, its declared
   grid), each model evaluated as the references are; the fine-tune itself is its baseline.

Stages whose output folder exists are reused (all folders are written atomically) and a sweep
does only the variants missing from its ``results.jsonl``, so an interrupted demo resumes
where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from realignkit.checkpoint.output import write_json_atomic, write_jsonl_atomic, write_text_atomic
from realignkit.errors import RealignError

log = logging.getLogger(__name__)

METRICS = ("harmfulness", "over_refusal", "task_accuracy", "old_task_accuracy")
MARKER = "demo.json"


@dataclass(frozen=True)
class DemoSize:
    """How big the world's model is and how long each stage trains."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    batch_size: int = 32
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    align_steps: int = 300
    unalign_steps: int = 20
    """A small unalignment set, as in the RESTA paper: enough to answer every harmful request,
    short enough not to damage the other skills (100 steps cut old-skill accuracy 67% -> 37%)."""
    finetune_steps: int = 500
    finetune_lr: float = 1e-3
    """Learning rate of every full fine-tune after pre-training (align, unalign, finetune);
    these keep the embeddings and LM head fixed (see ``run_world``)."""
    lora_lr: float = 5e-3
    """Learning rate of the LoRA fine-tune (LoRA needs a larger one than full fine-tuning)."""
    lora_r: int = 16
    replay: float = 0.3
    """Share of everyday benign requests (old skills, how-to) in the fine-tuning data."""
    eval_harmful: int = 150
    eval_benign: int = 80
    eval_new: int = 100
    eval_old: int = 120
    max_new_tokens: int = 32
    fisher_rows: int = 128
    """Harmful prompts with refusals for Fisher scores (IRR's default sample count)."""
    calibration_rows: int = 128
    """Fine-tuning rows for IRR's recalibration (its default sample count)."""
    threads: int | None = 1
    """CPU threads (tiny models run fastest on one; None leaves torch's default)."""


SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(),
    "small": DemoSize(
        hidden=192,
        layers=3,
        heads=4,
        pretrain_steps=2000,
        align_steps=600,
        unalign_steps=40,
        finetune_steps=1000,
        eval_harmful=300,
        eval_benign=150,
        eval_new=200,
        eval_old=200,
        threads=None,
    ),
    "medium": DemoSize(
        hidden=384,
        layers=6,
        heads=6,
        batch_size=64,
        pretrain_steps=4000,
        pretrain_lr=1e-3,
        align_steps=1000,
        unalign_steps=60,
        finetune_steps=1500,
        finetune_lr=2e-4,
        lora_lr=2e-3,
        eval_harmful=400,
        eval_benign=170,
        eval_new=300,
        eval_old=300,
        threads=None,
    ),
    "large": DemoSize(
        hidden=768,
        layers=12,
        heads=12,
        batch_size=64,
        pretrain_steps=8000,
        pretrain_lr=6e-4,
        align_steps=1500,
        unalign_steps=80,
        finetune_steps=2000,
        finetune_lr=1e-4,
        lora_lr=1e-3,
        eval_harmful=400,
        eval_benign=170,
        eval_new=300,
        eval_old=300,
        threads=None,
    ),
}
"""``tiny`` runs on a laptop CPU in minutes; the others scale the model up for a GPU."""

FAST = DemoSize(
    hidden=64,
    pretrain_steps=300,
    align_steps=150,
    unalign_steps=30,
    finetune_steps=100,
    eval_harmful=40,
    eval_benign=30,
    eval_new=30,
    eval_old=30,
    max_new_tokens=16,
    fisher_rows=16,
    calibration_rows=16,
)
"""The reduced world of the test suite (well under a minute)."""


def get_size(name: str, fast: bool = False) -> DemoSize:
    if fast:
        return FAST
    if name not in SIZES:
        raise RealignError(f"unknown --size {name!r}; use one of {', '.join(SIZES)}")
    return SIZES[name]


# -- world data ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldFiles:
    """The data files of one world, as a user would have them on disk."""

    pretrain: Path
    align: Path
    unalign: Path
    finetune: Path
    safe: Path
    calibration: Path
    eval_harmful: Path
    eval_benign: Path
    eval_new: Path
    eval_old: Path

    @classmethod
    def under(cls, folder: Path) -> WorldFiles:
        return cls(
            pretrain=folder / "pretrain.jsonl",
            align=folder / "align.jsonl",
            unalign=folder / "unalign.jsonl",
            finetune=folder / "finetune.jsonl",
            safe=folder / "harmful_refusals.jsonl",
            calibration=folder / "calibration.jsonl",
            eval_harmful=folder / "eval_harmful.jsonl",
            eval_benign=folder / "eval_benign.jsonl",
            eval_new=folder / "eval_new_skill.jsonl",
            eval_old=folder / "eval_old_skills.jsonl",
        )

    def eval_settings(self, size: DemoSize, seed: int) -> dict[str, Any]:
        """Keyword arguments of :func:`realignkit.eval.evaluate` for every model of the world
        (the sweep config's ``eval``): the keyword judge on held-out harmful requests and
        probes, accuracy on the new and the old skills."""
        return {
            "safety": [f"harmful:{self.eval_harmful}", f"benign:{self.eval_benign}"],
            "utility": [f"qa:{self.eval_new}", f"qa:{self.eval_old}"],
            "judge": "keyword",
            "max_new_tokens": size.max_new_tokens,
            "batch_size": 64,
            "seed": seed,
        }

    def row(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The table's metrics of one model, from its evaluation summary's ``metrics``."""
        return {
            "harmfulness": metrics[f"harmful:{self.eval_harmful}"]["harmfulness"],
            "over_refusal": metrics[f"benign:{self.eval_benign}"]["over_refusal"],
            "task_accuracy": metrics[f"qa:{self.eval_new}"]["accuracy"],
            "old_task_accuracy": metrics[f"qa:{self.eval_old}"]["accuracy"],
        }


def write_world(seed: int, size: DemoSize, folder: Path) -> WorldFiles:
    """Draw the world of ``seed`` and write every stage's data as JSONL files."""
    from realignkit.demo.world import build_world

    world = build_world(seed)
    files = WorldFiles.under(folder)
    bs = size.batch_size
    # Evaluation data first, from its own stream, so that training sizes never change it.
    evaluation = build_world(seed)
    evaluation.rng.seed(f"eval-{seed}")
    write_jsonl_atomic(files.eval_harmful, evaluation.heldout_harmful(size.eval_harmful))
    write_jsonl_atomic(files.eval_benign, evaluation.heldout_probes(size.eval_benign))
    write_jsonl_atomic(files.eval_new, evaluation.heldout_new_skill(size.eval_new))
    write_jsonl_atomic(files.eval_old, evaluation.heldout_old_skills(size.eval_old))
    write_jsonl_atomic(files.pretrain, world.pretrain_rows(size.pretrain_steps * bs))
    write_jsonl_atomic(files.align, world.align_rows(size.align_steps * bs))
    write_jsonl_atomic(files.unalign, world.unalign_rows(size.unalign_steps * bs))
    write_jsonl_atomic(files.finetune, world.finetune_rows(size.finetune_steps * bs, size.replay))
    write_jsonl_atomic(files.safe, world.safe_rows(size.fisher_rows))
    write_jsonl_atomic(files.calibration, world.finetune_rows(size.calibration_rows, size.replay))
    return files


@dataclass(frozen=True)
class WorldModels:
    """The checkpoints of one world, each written by one stage of :func:`build_world_models`."""

    init: Path
    pretrained: Path
    aligned: Path
    unaligned: Path
    safety_vector: Path
    safety_finetuned: Path
    finetuned_full: Path
    finetuned_lora: Path  # a LoRA adapter on ``aligned``

    @classmethod
    def under(cls, folder: Path) -> WorldModels:
        """Each checkpoint in the folder named after its field (``safety_vector`` →
        ``safety-vector``)."""
        return cls(**{f.name: folder / f.name.replace("_", "-") for f in fields(cls)})


def build_init_model(seed: int, size: DemoSize, out: Path) -> Path:
    """A randomly initialised Llama with the world's tokenizer: the starting checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    from realignkit.checkpoint.card import model_card
    from realignkit.checkpoint.writer import CheckpointWriter
    from realignkit.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer
    from realignkit.demo.world import build_world

    tokenizer = train_tokenizer(build_world(seed).all_text())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=2 * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    set_seed(seed)
    model = LlamaForCausalLM(config)
    with CheckpointWriter(out, overwrite=True) as writer:
        model.save_pretrained(writer.path)
        tokenizer.save_pretrained(writer.path)
        writer.write_card(
            model_card(
                method="init",
                summary="Random initialisation of the miniature world's Llama (realignkit demo).",
                inputs={"world seed": seed},
                params={
                    k: v for k, v in asdict(size).items() if k in ("hidden", "layers", "heads")
                },
            )
        )
    return out


# -- running -----------------------------------------------------------------------------------
@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stage(name: str, out: Path, timings: dict[str, float], build: Callable[[], Any]) -> Path:
    """Run ``build`` unless ``out`` exists already (a finished stage of an earlier run)."""
    if out.exists():
        log.info("%s: reusing %s", name, out)
        return out
    start = time.perf_counter()
    build()
    timings[name] = round(time.perf_counter() - start, 1)
    return out


def build_world_models(
    seed: int, size: DemoSize, folder: Path, data: WorldFiles, timings: dict[str, float]
) -> WorldModels:
    """Stages 1-3 for one seed: every checkpoint of the world under ``folder``, each stage
    skipped when its folder exists."""
    from realignkit.methods.safety_vector import compute_safety_vector
    from realignkit.train import TrainConfig, finetune, unalign

    m = WorldModels.under(folder)

    def full(steps: int, lr: float, freeze: bool = True) -> TrainConfig:
        # After pre-training, full fine-tunes keep the embeddings and LM head fixed: in a model
        # this small they hold a quarter of the weights (in an LLM a few percent), and the
        # methods edit the decoder blocks.
        return TrainConfig(
            lora=False,
            max_steps=steps,
            lr=lr,
            batch_size=size.batch_size,
            seed=seed,
            max_length=128,
            freeze_embeddings=freeze,
        )

    _stage("init", m.init, timings, lambda: build_init_model(seed, size, m.init))
    _stage(
        "pretrain",
        m.pretrained,
        timings,
        lambda: finetune(
            m.init,
            data.pretrain,
            m.pretrained,
            replace(full(size.pretrain_steps, size.pretrain_lr, freeze=False), warmup=0.05),
            method="pretrain",
        ),
    )
    _stage(
        "align",
        m.aligned,
        timings,
        lambda: finetune(
            m.pretrained,
            data.align,
            m.aligned,
            full(size.align_steps, size.finetune_lr),
            method="align",
        ),
    )
    _stage(
        "unalign",
        m.unaligned,
        timings,
        lambda: unalign(
            m.aligned, data.unalign, m.unaligned, full(size.unalign_steps, size.finetune_lr)
        ),
    )
    _stage(
        "safety-vector",
        m.safety_vector,
        timings,
        lambda: compute_safety_vector(m.aligned, m.safety_vector, unaligned=m.unaligned),
    )
    # SafeMERGE's safety fine-tune: the aligned model trained a little more on harmful
    # prompts with safe responses (the data IRR's Fisher scores and Safe Delta read).
    _stage(
        "safety-finetune",
        m.safety_finetuned,
        timings,
        lambda: finetune(
            m.aligned, data.safe, m.safety_finetuned, full(size.unalign_steps, size.finetune_lr)
        ),
    )
    _stage(
        "finetune-full",
        m.finetuned_full,
        timings,
        lambda: finetune(
            m.aligned, data.finetune, m.finetuned_full, full(size.finetune_steps, size.finetune_lr)
        ),
    )
    _stage(
        "finetune-lora",
        m.finetuned_lora,
        timings,
        lambda: finetune(
            m.aligned,
            data.finetune,
            m.finetuned_lora,
            TrainConfig(
                lora=True,
                lora_r=size.lora_r,
                lora_alpha=2 * size.lora_r,
                max_steps=size.finetune_steps,
                lr=size.lora_lr,
                batch_size=size.batch_size,
                seed=seed,
                max_length=128,
            ),
        ),
    )
    return m


def sweep_config(
    world: Path,
    kind: str,
    size: DemoSize,
    *,
    seed: int = 0,
    methods: list[str] | None = None,
    grids: bool = False,
) -> dict[str, Any]:
    """The `realignkit sweep` config of one seed's world (``world``: its ``seed-N`` folder)
    and one fine-tune (``kind``: ``full`` or ``lora``): the fine-tune as the baseline, and
    every method (``methods``; default: every registered one) at its defaults; with
    ``grids``, each method's declared ``sweep_grid`` as well."""
    from realignkit.methods.registry import load_all, load_declarations

    m, data = WorldModels.under(world / "checkpoints"), WorldFiles.under(world / "data")
    recipes = load_all()
    chosen = sorted(recipes) if methods is None else methods
    entries: list[dict[str, Any]] = []
    for name in chosen:
        entries.append({"method": name})
        grid = load_declarations()[name].sweep_grid
        if grids and grid:
            entries.append({"method": name, **grid})
    finetuned = {"finetuned": m.finetuned_full} if kind == "full" else {"adapter": m.finetuned_lora}
    models = {
        "aligned": m.aligned,
        "pretrained": m.pretrained,
        "safety_vector": m.safety_vector,
        "safety_model": m.safety_finetuned,
        **finetuned,
    }
    return {
        "models": {k: str(v) for k, v in models.items()},
        "data": {"harmful": str(data.safe), "calibration": str(data.calibration)},
        "methods": entries,
        "baselines": ["finetuned"],  # the aligned model is a reference, evaluated once
        "eval": data.eval_settings(size, seed),
        "seed": seed,
    }


def run_world(
    seed: int,
    size: DemoSize,
    folder: Path,
    methods: list[str] | None = None,
    *,
    grids: bool = False,
) -> list[dict[str, Any]]:
    """All stages for one seed in ``folder``: the world's models and their references'
    evaluations, then one `realignkit sweep` per fine-tune (``folder/sweep-{full,lora}``, its
    config beside it in ``sweep-{full,lora}.json``) that re-aligns it with every method and
    evaluates each. Returns one result row per model (the methods at their defaults; the grids'
    variants stay in the sweeps' own tables)."""
    from realignkit.eval import evaluate
    from realignkit.sweep import run_sweep

    timings: dict[str, float] = {}
    data = write_world(seed, size, folder / "data")
    m = build_world_models(seed, size, folder / "checkpoints", data, timings)
    settings = data.eval_settings(size, seed)

    def reference(name: str, path: Path) -> dict[str, Any]:
        start = time.perf_counter()
        summary = evaluate(path, out_dir=folder / "reports" / name, name=name, **settings)
        timings[f"eval {name}"] = round(time.perf_counter() - start, 1)
        base = {"model": name, "method": "none", "finetune": None, "seed": seed}
        return base | data.row(summary["metrics"])

    rows = [reference(n, getattr(m, n)) for n in ("pretrained", "aligned", "unaligned")]
    swept: dict[str, list[dict[str, Any]]] = {}
    for kind in ("full", "lora"):
        config = sweep_config(folder, kind, size, seed=seed, methods=methods, grids=grids)
        out = folder / f"sweep-{kind}"
        # beside the sweep's folder, not in it: `realignkit sweep` refuses an output that
        # holds its own input
        write_json_atomic(folder / f"sweep-{kind}.json", config)
        start = time.perf_counter()
        result = run_sweep(config, out)
        if result.built or result.evaluated:
            timings[f"sweep {kind}"] = round(time.perf_counter() - start, 1)
        # the fine-tune and the methods at their defaults (no parameter given) are the table's
        # rows; the grids' variants stay in the sweep's own table
        swept[kind] = [r for r in result.rows if r["method"] == "baseline" or not r["params"]]
    for full, lora in zip(swept["full"], swept["lora"], strict=True):  # the same variants
        for kind, record in (("full", full), ("lora", lora)):
            method = "none" if record["method"] == "baseline" else record["method"]
            name = f"finetuned-{kind}" + ("" if method == "none" else f"+{method}")
            base = {"model": name, "method": method, "finetune": kind, "seed": seed}
            rows.append(base | data.row(record["metrics"]))
    timings_file = folder / "timings.json"  # a resumed run keeps the earlier stages' times
    earlier = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    write_json_atomic(timings_file, earlier | timings)
    return rows


# -- the whole demo ------------------------------------------------------------------------------
def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and sd over seeds, when there are several) of every metric, per model."""
    order: list[str] = []
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["model"] not in by_model:
            order.append(row["model"])
        by_model.setdefault(row["model"], []).append(row)
    out = []
    for name in order:
        group = by_model[name]
        merged: dict[str, Any] = {
            "model": name,
            "method": group[0]["method"],
            "finetune": group[0]["finetune"],
            "seeds": len(group),
        }
        for metric in METRICS:
            values = [r[metric] for r in group if r[metric] is not None]
            merged[metric] = statistics.fmean(values) if values else None
            if len(group) > 1:
                merged[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(merged)
    return out


def _cell(row: dict[str, Any], metric: str) -> str:
    value = row.get(metric)
    if value is None:
        return "n/a"
    text = f"{100 * value:.1f}"
    sd = row.get(f"{metric}_sd")
    return f"{text} ± {100 * sd:.1f}" if sd is not None else text


def results_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: rates in percent (mean ± sd over seeds when there are several)."""
    lines = [
        "| model | method | harmfulness | over-refusal | new-skill accuracy | old-skill accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [_cell(row, m) for m in METRICS]
        lines.append(f"| {row['model']} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(rows: list[dict[str, Any]], path: Path) -> Path:
    """Harmfulness against new-skill accuracy (:mod:`realignkit.plots`' axes), one series per
    kind of fine-tune; the bars are the spread (one standard deviation) over seeds."""
    from realignkit.plots import Panel, Point, Series, plot_safety_utility

    kinds = {
        "full": Series([], "full fine-tune", "o", "tab:blue"),
        "lora": Series([], "LoRA", "s", "tab:orange"),
        "aligned": Series([], "aligned", "*", "tab:green", markersize=9),
        None: Series([], None, "*", "tab:gray", markersize=9),
    }
    for row in rows:
        if row["harmfulness"] is None or row["task_accuracy"] is None:
            continue
        if row["model"] in ("pretrained", "unaligned"):  # references, in the table
            continue
        x, y = row["task_accuracy"], row["harmfulness"]
        dx, dy = row.get("task_accuracy_sd", 0.0), row.get("harmfulness_sd", 0.0)
        label = row["model"].replace("finetuned-", "ft-")
        kind = "aligned" if row["model"] == "aligned" else row["finetune"]
        kinds[kind].points.append(Point(label, x, y, (x - dx, x + dx), (y - dy, y + dy)))
    panel = Panel(
        list(kinds.values()),
        x_label="new-skill accuracy →",
        title="held-out harmful requests; bars: one sd over seeds",
    )
    return plot_safety_utility(panel, path, title="realignkit demo: safety vs. utility")


@dataclass
class DemoResult:
    rows: list[dict[str, Any]]
    per_seed: list[dict[str, Any]]
    table: str
    out: Path
    seconds: float


def _prepare_out(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    marker = out / MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise RealignError(
                f"output {str(out)!r} exists and is not a demo folder; choose another --out"
            )
        previous = json.loads(marker.read_text())
        if overwrite:
            shutil.rmtree(out)
        elif previous.get("settings") != settings:
            raise RealignError(
                f"{str(out)!r} holds a demo with other settings; pass "
                "--overwrite to start again or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"settings": settings})


def run_demo(
    out: str | os.PathLike[str] = "demo-out",
    *,
    seeds: int = 1,
    size: str = "tiny",
    fast: bool = False,
    methods: list[str] | None = None,
    overwrite: bool = False,
    sweep: bool = False,
) -> DemoResult:
    """The whole demo for ``seeds`` seeds; writes results.json, results.md and the plot."""
    from realignkit.methods.registry import load_all

    if seeds < 1:
        raise RealignError(f"--seeds must be at least 1, got {seeds}")
    recipes = load_all()
    for name in methods or ():  # before the world is trained, not after
        if name not in recipes:
            raise RealignError(f"unknown method {name!r}; present: {', '.join(sorted(recipes))}")
    out = Path(out)
    dims = get_size(size, fast)
    settings = {"size": "fast" if fast else size, "dims": asdict(dims)}
    _prepare_out(out, settings, overwrite)
    start = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    with _threads(dims.threads if not torch.cuda.is_available() else None):
        for seed in range(seeds):
            # --sweep: the grids of every method's strength too, on seed 0's world
            grids = sweep and seed == 0
            per_seed += run_world(seed, dims, out / f"seed-{seed}", methods, grids=grids)
    rows = aggregate(per_seed)
    table = results_table(rows)
    write_json_atomic(out / "results.json", rows)
    write_json_atomic(out / "results_per_seed.json", per_seed)
    write_text_atomic(out / "results.md", table + "\n")
    plot_results(rows, out / "safety_utility.png")
    seconds = time.perf_counter() - start
    marker = json.loads((out / MARKER).read_text())
    marker["seconds"] = round(seconds, 1)
    write_json_atomic(out / MARKER, marker)
    return DemoResult(rows, per_seed, table, out, seconds)


def degradation(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Points of harmfulness each plain fine-tune gained over ``aligned`` (the phenomenon)."""
    by_name = {r["model"]: r for r in rows}
    base = by_name["aligned"]["harmfulness"]
    return {
        name: by_name[name]["harmfulness"] - base
        for name in ("finetuned-full", "finetuned-lora")
        if name in by_name and not math.isnan(by_name[name]["harmfulness"])
    }
