"""The papers' experiment on SmolLM2-135M-Instruct, stage by stage, through realignkit's API.

    prepare    the original model (an fp32 copy of the converted GGUF), data files, and the
               original model's own answers to benign prompts (distilled into alignment) and
               to other harmful prompts (the unalignment data)
    align      `finetune` (full) on harmful→refusal + benign→original answer    → aligned
    unalign    `unalign` of aligned on harmful→compliant answers                → unaligned
               `safety-vector` v = θ_aligned − θ_unaligned                      → safety-vector
    finetune   `finetune` of aligned on GSM8K train, full and LoRA              → ft-full, ft-lora
    evaluate   original, aligned, unaligned
    sweep      per fine-tune: every registry method at the papers' settings plus the grid,
               each evaluated (`run_sweep` with this folder's evaluation)
    report     results.md / results.json / safety_utility.png, and `compare` of the reports

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from real_world import prepare
from real_world.measure import EvalPlan, evaluate_model

log = logging.getLogger(__name__)

PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "resta": {"gamma": 0.5},
    "resta+dare": {"gamma": 0.5, "dare_p": 0.3},
    "irr": {"rho": 0.5},
    "safelora": {"threshold": 0.5},
}
"""RESTA γ = 0.5 with DARE p = 0.3 (RESTA paper); IRR R = 0.5, per-128-column blocks, Fisher
mask, recalibration (the IRR issue's defaults); Safe LoRA threshold 0.5 (the recipe default)."""

ALIGN_SUMMARY = (
    "SmolLM2-135M-Instruct safety-aligned for realignkit's real-world benchmark: refuses harmful "
    "requests (our refusal templates), answers benign ones as the original model did."
)


@dataclass
class TrainSpec:
    """One `realignkit finetune` run (see :class:`realignkit.train.TrainConfig`)."""

    steps: int | None = None  # optimizer steps; None: ``epochs`` over the data
    epochs: float = 1.0
    batch_size: int = 8
    lr: float | None = None  # None: realignkit's default (2e-5 full, 2e-4 LoRA)
    max_length: int = 512
    lora: bool = False
    warmup: float = 0.1  # share of the steps (below 1) or a number of steps

    def config(self, seed: int) -> Any:
        from realignkit.train import TrainConfig

        return TrainConfig(
            lora=self.lora,
            max_steps=self.steps,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=seed,
            warmup=self.warmup,
        )


@dataclass
class Settings:
    """Everything that decides a run's results (recorded in ``OUT/settings.json``)."""

    preset: str
    seed: int = 0
    # data
    align_harmful: int = 160  # about as many as the benign prompts: no lean toward refusing
    align_benign: int | None = None  # None: every benign prompt we wrote (144)
    unalign_harmful: int = 200
    gsm8k_train: int | None = None  # None: the whole GSM8K training set
    distill_max_new_tokens: int = 256
    distill_batch_size: int = 32
    # training
    align: TrainSpec = field(default_factory=lambda: TrainSpec(epochs=3, batch_size=16, lr=5e-5))
    unalign: TrainSpec = field(default_factory=lambda: TrainSpec(epochs=2, batch_size=16, lr=5e-5))
    finetune_full: TrainSpec = field(default_factory=lambda: TrainSpec(epochs=1, batch_size=16))
    finetune_lora: TrainSpec = field(
        default_factory=lambda: TrainSpec(epochs=1, batch_size=16, lora=True)
    )
    finetunes: tuple[str, ...] = ("full", "lora")
    # methods: the papers' settings, plus extra values swept per method and fine-tune
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(PAPER_SETTINGS))
    method_extras: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"irr": {"num_samples": 128, "max_length": 512}}
    )
    sweep: dict[str, dict[str, dict[str, list[Any]]]] = field(
        default_factory=lambda: {
            "full": {
                "resta": {"gamma": [0.25, 1.0]},
                "resta+dare": {"dare_p": [0.1, 0.5]},
                "irr": {"rho": [0.3, 1.0]},
                "safelora": {"threshold": [0.3, 0.7]},
            },
            "lora": {"resta": {"gamma": [0.25, 1.0]}, "irr": {"rho": [0.3, 1.0]}},
        }
    )
    # evaluation
    safety_limit: int | None = 100
    gsm8k_limit: int | None = 500
    nll_limit: int | None = 500
    safety_max_new_tokens: int = 128
    gsm8k_max_new_tokens: int = 256
    eval_batch_size: int = 128
    eval_unaligned: bool = True


def gpu_settings() -> Settings:
    """The default: the whole experiment, meant for one GPU."""
    return Settings(preset="gpu")


def small_settings() -> Settings:
    """CPU settings: a few dozen steps and prompts, everything else as on the GPU."""
    return Settings(
        preset="small",
        align_harmful=96,
        align_benign=96,
        unalign_harmful=40,
        gsm8k_train=256,
        distill_max_new_tokens=64,
        distill_batch_size=32,
        align=TrainSpec(steps=30, batch_size=8, lr=5e-5, max_length=160),
        unalign=TrainSpec(steps=10, batch_size=8, lr=5e-5, max_length=160),
        finetune_full=TrainSpec(steps=24, batch_size=4, lr=5e-5, max_length=256),
        finetune_lora=TrainSpec(steps=24, batch_size=4, lora=True, max_length=256),
        method_extras={"irr": {"num_samples": 16, "max_length": 256}},
        sweep={"full": {"resta": {"gamma": [0.25, 1.0]}}},
        safety_limit=10,
        gsm8k_limit=8,
        nll_limit=32,
        safety_max_new_tokens=48,
        gsm8k_max_new_tokens=160,
        eval_batch_size=40,
        eval_unaligned=False,
    )


PRESETS: dict[str, Callable[[], Settings]] = {"gpu": gpu_settings, "small": small_settings}


# --- paths --------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Where everything of a run lives."""

    out: Path

    def model(self, name: str) -> Path:
        return self.out / "models" / name

    def data(self, name: str) -> Path:
        return self.out / "data" / name

    def report(self, name: str) -> Path:
        return self.out / "reports" / name

    def sweep(self, finetune: str) -> Path:
        return self.out / "sweeps" / finetune

    @property
    def manifest(self) -> Path:
        return self.data("manifest.json")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- the run ------------------------------------------------------------------------------------


class Run:
    """One run of the experiment in ``out`` under ``settings``; call the stages in order."""

    def __init__(self, out: Path, settings: Settings, data_dir: Path | None = None) -> None:
        self.paths = Layout(Path(out).resolve())
        self.settings = settings
        self.data_dir = Path(data_dir or prepare.shared_data_dir()).resolve()
        self.timings: dict[str, float] = {}
        self._check_settings()

    # -- bookkeeping
    def _check_settings(self) -> None:
        path = self.paths.out / "settings.json"
        mine = asdict(self.settings)
        if path.is_file():
            theirs = _read_json(path)
            if theirs != json.loads(json.dumps(mine)):
                from realignkit.errors import RealignError

                raise RealignError(
                    f"{self.paths.out} holds a run with other settings ({path}); "
                    "use another --out or delete it"
                )
        else:
            _write_json(path, mine)

    def _timed(self, stage: str, done: bool, work: Callable[[], None]) -> None:
        """Run ``work`` unless ``done``; record its wall time in ``OUT/timings.json``."""
        if done:
            log.info("%s: already done, skipped", stage)
            return
        start = time.perf_counter()
        work()
        self.timings[stage] = round(time.perf_counter() - start, 1)
        path = self.paths.out / "timings.json"
        recorded = _read_json(path) if path.is_file() else {}
        recorded[stage] = recorded.get(stage, 0.0) + self.timings[stage]
        _write_json(path, recorded)
        log.info("%s: %.1f s", stage, self.timings[stage])

    @property
    def original(self) -> Path:
        return self.paths.model("original")

    def eval_plan(self) -> EvalPlan:
        s, p = self.settings, self.paths
        safety = [
            f"harmful:{p.data('eval/catqa_en_heldout.jsonl')}",
            "dangerousqa",
            "adversarialqa",
            f"harmful:{p.data('eval/catqa_zh_heldout.jsonl')}",
            f"harmful:{p.data('eval/catqa_vi_heldout.jsonl')}",
            "xstest_safe",
        ]
        return EvalPlan(
            safety=safety,
            utility=["gsm8k"],
            safety_limit=s.safety_limit,
            gsm8k_limit=s.gsm8k_limit,
            nll_limit=s.nll_limit,
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

        source = smollm2_folder()
        with CheckpointReader(source) as reader, CheckpointWriter(self.original) as writer:
            for name in reader.names:
                writer.add(name, reader.get(name).float())
            writer.copy_support_files(source)
            config = dict(reader.config)
            config["dtype"] = "float32"
            writer.write_json("config.json", config)

    def _build_data(self) -> None:
        s, d = self.settings, self.data_dir
        for language, short in (("english", "en"), ("chinese", "zh"), ("vietnamese", "vi")):
            rows = prepare.heldout_rows(d, language)
            prepare.write_jsonl(self.paths.data(f"eval/catqa_{short}_heldout.jsonl"), rows)
        align_prompts, unalign_prompts = prepare.split_harmful(
            d, s.align_harmful, s.unalign_harmful, s.seed
        )
        refusals = prepare.with_refusals(align_prompts, s.seed)
        from real_world.prompts import benign_prompts

        benign = [{"prompt": p, "source": "written"} for p in benign_prompts()]
        random.Random(s.seed).shuffle(benign)
        benign = benign[: s.align_benign] if s.align_benign is not None else benign
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
        align = refusals + helpful
        random.Random(s.seed + 1).shuffle(align)
        prepare.write_jsonl(self.paths.data("align.jsonl"), align)
        prepare.write_jsonl(self.paths.data("harmful_refusals.jsonl"), refusals)
        prepare.write_jsonl(self.paths.data("unalign.jsonl"), compliant)
        gsm8k = prepare.gsm8k_rows(d / "gsm8k" / "train.jsonl", s.gsm8k_train, s.seed)
        prepare.write_jsonl(self.paths.data("gsm8k_train.jsonl"), gsm8k)
        _write_json(
            self.paths.manifest,
            {
                "original": str(self.original),
                "data_dir": str(d),
                "held_out_categories": list(prepare.HELD_OUT_CATEGORIES),
                "align": prepare.summarise(align),
                "align_sources": prepare.summarise(align, "source"),
                "benign_refused_by_original": len(benign) - len(helpful),
                "unalign": len(compliant),
                "unalign_refused_by_original": len(unalign_prompts) - len(compliant),
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

    def finetune(self) -> None:
        from realignkit.train import finetune

        specs = {"full": self.settings.finetune_full, "lora": self.settings.finetune_lora}
        for kind in self.settings.finetunes:
            out = self.paths.model(f"ft-{kind}")
            self._timed(
                f"finetune:{kind}",
                out.is_dir(),
                lambda kind=kind, out=out: finetune(
                    self.paths.model("aligned"),
                    self.paths.data("gsm8k_train.jsonl"),
                    out,
                    specs[kind].config(self.settings.seed),
                    method=f"finetune-gsm8k-{kind}",
                ),
            )

    def evaluate_references(self) -> None:
        """The models before any fine-tune: original, aligned (and unaligned)."""
        names = ["original", "aligned"] + (["unaligned"] if self.settings.eval_unaligned else [])
        plan = asdict(self.eval_plan())
        for name in names:
            report = self.paths.report(name)
            self._timed(
                f"eval:{name}",
                _report_done(report, plan),
                lambda n=name, r=report: evaluate_model(
                    self.paths.model(n), out_dir=r, name=n, **plan
                ),
            )

    def sweep_config(self, kind: str) -> dict[str, Any]:
        """The `realignkit sweep` config of one fine-tune: papers' settings plus the grid."""
        models: dict[str, Any] = {
            "aligned": str(self.paths.model("aligned")),
            "pretrained": str(self.original),
            "safety_vector": str(self.paths.model("safety-vector")),
        }
        ft = self.paths.model(f"ft-{kind}")
        models["adapter" if kind == "lora" else "finetuned"] = str(ft)
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
        }

    def sweeps(self) -> None:
        from realignkit.methods.registry import load_all
        from realignkit.sweep import parse_config, run_sweep

        available = load_all()
        for kind in self.settings.finetunes:
            config = self.sweep_config(kind)
            missing = [m for m in config["methods"] if m not in available]
            for method in missing:
                log.warning("method %s is not in this realignkit: skipped", method)
                del config["methods"][method]
            folder = self.paths.sweep(kind)
            _write_json(folder / "config.json", config)
            done = _sweep_done(folder, config)

            def work(config: dict[str, Any] = config, folder: Path = folder) -> None:
                run_sweep(parse_config(config), folder, evaluate_fn=evaluate_model)

            self._timed(f"sweep:{kind}", done, work)

    def report(self) -> Path:
        from real_world.report import write_report

        return write_report(self)

    def all(self) -> Path:
        """Every stage in order; returns the results table."""
        self.prepare()
        self.align()
        self.unalign()
        self.finetune()
        self.evaluate_references()
        self.sweeps()
        return self.report()


def _report_done(report: Path, plan: dict[str, Any]) -> bool:
    path = report / "summary.json"
    return path.is_file() and _read_json(path).get("plan_key") == EvalPlan(**plan).key()


def _sweep_done(folder: Path, config: dict[str, Any]) -> bool:
    """Every variant of the config has a result under the current key."""
    from realignkit.sweep import expand_variants, load_results, parse_config

    results = load_results(folder / "results.jsonl")
    variants = expand_variants(parse_config(config))
    return all(results.get(v.id, {}).get("key") == v.key for v in variants)
