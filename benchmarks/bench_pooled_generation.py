"""Prompt files generated one call each, or pooled into shared batches, on SmolLM2-135M-Instruct.

What `realignkit eval` does with several benchmarks under the same settings: the demo's four
test sets (20 CatQA-en held-out, 20 DangerousQA, 20 AdversarialQA, 50 XSTest safe by default),
greedy, 24 new tokens, batches of 64, longest prompts first. Separate and pooled runs alternate
in one process (the machine may be shared) and the ratio is printed per round.

    python benchmarks/bench_pooled_generation.py [--model DIR] [--per-set 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

from realignkit.demo.real.data import shared_data_dir, test_rows
from realignkit.eval.generate import GenerationSettings, load_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: SmolLM2)")
    parser.add_argument("--per-set", type=int, default=20, help="prompts per harmful set")
    parser.add_argument("--xstest", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    if args.model is None:
        from realignkit.checkpoint.gguf import smollm2_folder

        args.model = str(smollm2_folder())
    sizes = {
        "catqa_en_heldout": args.per_set,
        "dangerousqa": args.per_set,
        "adversarialqa": args.per_set,
        "xstest_safe": args.xstest,
    }
    sets = test_rows(shared_data_dir(), sizes, seed=0)
    generator = load_generator(args.model)
    texts = [[generator.format(r["prompt"]) for r in rows] for rows in sets.values()]
    settings = GenerationSettings(max_new_tokens=args.new_tokens)

    def run(groups: list[list[str]]) -> float:
        start = time.perf_counter()
        for group in groups:
            order = sorted(group, key=len, reverse=True)
            for i in range(0, len(order), args.batch):
                generator.generate(order[i : i + args.batch], settings)
        return time.perf_counter() - start

    run([texts[0][:8]])  # warm-up
    total = sum(len(t) for t in texts)
    print(f"{total} prompts in {len(texts)} sets, batch {args.batch}, {args.new_tokens} new tokens")
    for r in range(args.rounds):
        separate = run(texts)
        pooled = run([[t for group in texts for t in group]])
        print(
            f"round {r}: one call per set {separate:.1f} s, pooled {pooled:.1f} s; "
            f"{separate / pooled:.2f}x"
        )


if __name__ == "__main__":
    main()
