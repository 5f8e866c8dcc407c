"""Generation with and without the shared-prefix fast path, on SmolLM2-135M-Instruct.

The demo's evaluation in small: XSTest's safe prompts rendered by the model's chat template
(SmolLM2's inserts its default system prompt), one batch, greedy, a fixed number of new
tokens. Plain and fast runs alternate (the machine may be shared: the spread is printed) and
their tokens are compared, which must be equal.

    OMP_NUM_THREADS=1 python benchmarks/bench_prefix.py --prompts 64 --new-tokens 24 --runs 3
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from realignkit.checkpoint.gguf import smollm2_folder
from realignkit.eval.generate import GenerationSettings, load_generator
from realignkit.eval.prefix import common_prefix_length

XSTEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "xstest" / "xstest_prompts.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3, help="runs of each path, alternating")
    parser.add_argument("--xstest", type=Path, default=XSTEST)
    args = parser.parse_args()

    generator = load_generator(smollm2_folder(), backend="hf", device="cpu")
    with args.xstest.open(encoding="utf-8") as fh:
        safe = [row["prompt"] for row in csv.DictReader(fh) if row["label"] == "safe"]
    texts = [generator.format(p) for p in safe[: args.prompts]]
    batch = sorted(generator.encode(texts), key=len, reverse=True)  # as generate_cached sorts
    lengths = [len(ids) for ids in batch]
    shared = common_prefix_length(batch)
    print(
        f"{len(batch)} prompts, {min(lengths)}-{max(lengths)} tokens "
        f"(mean {statistics.fmean(lengths):.1f}), shared prefix {shared} tokens "
        f"({shared / statistics.fmean(lengths):.0%} of the mean); {args.new_tokens} new tokens; "
        f"{torch.get_num_threads()} torch threads"
    )
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}  # steadier than wall on a shared box
    outputs: dict[bool, list] = {}
    for _ in range(args.runs):
        for fast in (False, True):
            generator.share_prefix = fast
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[fast] = generator.generate_ids(batch, settings)
            times[fast].append(time.perf_counter() - start)
            cpu[fast].append(time.process_time() - start_cpu)
            print(
                f"  {'fast' if fast else 'plain'}: {times[fast][-1]:.1f} s wall, "
                f"{cpu[fast][-1]:.1f} s CPU",
                flush=True,
            )
    same = sum(a == b for a, b in zip(outputs[False], outputs[True], strict=True))
    plain, fast = statistics.median(times[False]), statistics.median(times[True])
    ratios = sorted(f / p for p, f in zip(times[False], times[True], strict=True))
    print(
        f"plain {plain:.1f} s (runs {min(times[False]):.1f}-{max(times[False]):.1f}), "
        f"fast {fast:.1f} s (runs {min(times[True]):.1f}-{max(times[True]):.1f}); "
        f"fast/plain {fast / plain:.2f} (pairwise {ratios[0]:.2f}-{ratios[-1]:.2f}); "
        f"identical outputs {same}/{len(batch)}"
    )
    print(
        f"CPU time: fast/plain {statistics.median(cpu[True]) / statistics.median(cpu[False]):.2f}"
    )


if __name__ == "__main__":
    main()
