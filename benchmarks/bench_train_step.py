"""Tokens per second of SmolLM2-135M-Instruct on this machine: one forward pass, and one
training step (forward, backward, AdamW) of the full model, of its last N blocks, and of LoRA
on its last N blocks. Tells what a CPU affords the demo's training stages.

    python benchmarks/bench_train_step.py [--batch 16] [--length 96] [--last 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--last", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from realignkit.checkpoint.gguf import smollm2_folder
    from realignkit.modeling import load_causal_lm
    from realignkit.train.finetune import TrainConfig, _lora_model, _train_only_last_blocks

    folder = smollm2_folder()
    tokens = args.batch * args.length
    ids = torch.randint(
        0, 49152, (args.batch, args.length), generator=torch.Generator().manual_seed(0)
    )

    def fresh() -> torch.nn.Module:
        return load_causal_lm(folder, dtype=torch.float32, device=torch.device("cpu"))

    with torch.inference_mode():
        model = fresh()
        model(input_ids=ids)  # warm-up
        start = time.perf_counter()
        model(input_ids=ids)
        forward = tokens / (time.perf_counter() - start)
    print(f"forward: {forward:.0f} tokens/s ({args.batch} x {args.length} tokens)")

    lora_last = TrainConfig(lora=True, train_last_layers=args.last)
    setups = {
        "full model": lambda m: m,
        f"last {args.last} blocks": lambda m: (_train_only_last_blocks(m, args.last), m)[1],
        f"LoRA r16, last {args.last} blocks": lambda m: _lora_model(m, lora_last),
    }
    for name, setup in setups.items():
        model = setup(fresh())
        trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=1e-5)
        times = []
        for _ in range(args.steps + 1):  # the first step warms up
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        best = min(times[1:])
        print(
            f"train step, {name}: {tokens / best:.0f} tokens/s "
            f"({best:.1f} s per step, best of {args.steps}); {tokens / best / forward:.2f}x forward"
        )


if __name__ == "__main__":
    main()
