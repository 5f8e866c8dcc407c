"""Tokens per second of SmolLM2-135M-Instruct on this machine: one forward pass, and one
training step (forward, backward, AdamW) of the full model, of its last N blocks, and of LoRA
on its last N blocks. Tells what a CPU affords the demo's training stages.

    python benchmarks/bench_train_step.py [--batch 16] [--length 96] [--last 8] [--steps 3]
    python benchmarks/bench_train_step.py --chat [--batch 16] [--steps 3]

``--chat`` times the demo's alignment batches instead (its written prompts and refusals in
SmolLM2's chat template, default system prompt included): realignkit's response loss with and
without the shared prefix (the batch's common start run once), full model and LoRA, paired in
one run, and prints the ratio.
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
    parser.add_argument("--chat", action="store_true", help="shared-prefix A/B on chat rows")
    args = parser.parse_args()
    if args.chat:
        chat_rows(args.batch, args.steps)
        return

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


def chat_rows(batch_size: int, steps: int) -> None:
    """Response-loss training steps on chat rows, the shared prefix off and on (A/B/A/B...)."""
    import random

    from realignkit.chat import Encoded, encode_exchange, pad_batch
    from realignkit.checkpoint.gguf import smollm2_folder
    from realignkit.demo.real.prompts import pick_refusal, written_harmful_prompts
    from realignkit.modeling import load_causal_lm, load_tokenizer
    from realignkit.train.finetune import TrainConfig, _lora_model, response_loss

    folder = smollm2_folder()
    tokenizer = load_tokenizer(folder, padding_side="right")
    rng = random.Random(0)
    prompts = rng.sample([p for p, _ in written_harmful_prompts()], batch_size)
    rows = [encode_exchange(tokenizer, p, pick_refusal(rng), max_length=160) for p in prompts]
    batch = pad_batch([Encoded(r.ids, r.response_start) for r in rows], tokenizer.pad_token_id)
    tokens = int(batch["attention_mask"].sum())
    print(f"{batch_size} chat rows, {tokens} tokens (width {batch['input_ids'].shape[1]})")
    for name, lora in (("full model", False), ("LoRA r16, every block", True)):
        model = load_causal_lm(folder, dtype=torch.float32, device=torch.device("cpu"))
        if lora:
            model = _lora_model(model, TrainConfig(lora=True))
        model.train()
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(steps + 1):  # the first round warms up
            for share in (False, True):
                start = time.perf_counter()
                loss, _ = response_loss(model, batch, share_prefix=share)
                loss.backward()
                model.zero_grad()
                times[share].append(time.perf_counter() - start)
        plain, shared = min(times[False][1:]), min(times[True][1:])
        print(
            f"{name}: plain {plain:.2f} s, shared prefix {shared:.2f} s per forward+backward "
            f"(best of {steps}); {plain / shared:.2f}x"
        )


if __name__ == "__main__":
    main()
