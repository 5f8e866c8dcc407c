"""HumanEval under the OS-level sandbox: correctness on all 164 problems and per-program overhead.

    python benchmarks/bench_sandbox.py                 # all 164 problems
    python benchmarks/bench_sandbox.py --limit 20      # a quick look

Measured in one run, one program at a time (no parallel workers, so the timings are not
contended by each other):

* pass@1 of the canonical solutions and of a known-wrong body (``return None``), sandboxed;
* for every problem, the wall time of grading its canonical solution sandboxed
  (``bubblewrap``: namespaces, seccomp, limits) and unsandboxed (``none``: the same two-process
  harness as plain children), in alternating order; the overhead is the paired difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from realignkit.eval import humaneval, sandbox
from realignkit.eval.benchmarks import LoadOptions, load_benchmark
from realignkit.eval.stats import Rate, paired_bootstrap_interval

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def timed(program: humaneval.Program, level: str, timeout: float) -> tuple[bool, float]:
    start = time.perf_counter()
    result = humaneval.run_program(program, timeout=timeout, isolation=level)
    return result.passed, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="Folder with humaneval/HumanEval.jsonl.gz")
    parser.add_argument("--limit", type=int, default=None, help="First N problems only.")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    works, why = sandbox.probe()
    if not works:
        print(f"the sandbox is unavailable here: {why}", file=sys.stderr)
        return 1
    options = LoadOptions(data_dir=args.data_dir or (DATA if DATA.exists() else None))
    problems = load_benchmark("humaneval", "utility", options).rows[: args.limit]
    canonical = [humaneval.build_program(p, p["canonical_solution"], chat=False) for p in problems]
    wrong = [humaneval.build_program(p, "    return None\n", chat=False) for p in problems]

    timed(canonical[0], humaneval.ISOLATED, args.timeout)  # warm caches (seccomp, page cache)
    timed(canonical[0], humaneval.UNSAFE, args.timeout)
    sandboxed, plain, passed, passed_plain = [], [], [], []
    for index, program in enumerate(canonical):
        order = (humaneval.ISOLATED, humaneval.UNSAFE)
        for level in order if index % 2 == 0 else order[::-1]:
            ok, seconds = timed(program, level, args.timeout)
            if level == humaneval.ISOLATED:
                passed.append(ok)
                sandboxed.append(seconds)
            else:
                passed_plain.append(ok)
                plain.append(seconds)
    wrong_passed = [humaneval.run_program(p, timeout=args.timeout).passed for p in wrong]

    n = len(problems)
    failing = [p["task_id"] for p, ok in zip(problems, passed, strict=True) if not ok]
    print(f"HumanEval problems: n={n}")
    print(f"canonical, sandboxed:   {sum(passed)}/{n} pass@1 = {Rate(sum(passed), n)}")
    print(f"canonical, unsandboxed: {sum(passed_plain)}/{n}")
    print(f"wrong body, sandboxed:  {sum(wrong_passed)}/{n} pass@1 = {Rate(sum(wrong_passed), n)}")
    if failing:
        print("canonical failures: " + ", ".join(failing))
    overhead = [(s - p) * 1000 for s, p in zip(sandboxed, plain, strict=True)]
    mean, low, high = paired_bootstrap_interval(
        [p * 1000 for p in plain], [s * 1000 for s in sandboxed]
    )
    quartiles = statistics.quantiles(overhead, n=4)
    print(
        f"time per program, median: sandboxed {1000 * statistics.median(sandboxed):.1f} ms, "
        f"unsandboxed {1000 * statistics.median(plain):.1f} ms (n={n} each)"
    )
    print(
        f"sandbox overhead per program: median {statistics.median(overhead):.1f} ms "
        f"[IQR {quartiles[0]:.1f}, {quartiles[2]:.1f}], mean {mean:.1f} ms "
        f"[95% bootstrap {low:.1f}, {high:.1f}] (n={n} paired programs; goal <= 50 ms)"
    )
    return 0 if sum(passed) == n and not any(wrong_passed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
