"""Safe LoRA's product order: V·(Vᵀ·B)/‖V‖ against forming C = V·Vᵀ/‖V‖ first.

One 4096 × 4096 weight (Llama-7B's q_proj shape) and a rank-r LoRA B, in float32. Prints the
median time of each order, the extra memory each needs, and the largest difference of the
results (they are the same matrix up to rounding).

    python benchmarks/bench_safelora_order.py            # d = 4096, r = 16
    python benchmarks/bench_safelora_order.py --d 2048 --r 64 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from realignkit.ops.projection import apply_alignment_projection


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(args.d, args.d, generator=gen).mul_(1e-3).to(args.device)
    b = torch.randn(args.d, args.r, generator=gen).to(args.device)
    norm = float(torch.linalg.matrix_norm(v))

    def sync() -> None:
        if v.is_cuda:
            torch.cuda.synchronize()

    def thin() -> torch.Tensor:
        out = apply_alignment_projection(v, b, norm)
        sync()
        return out

    def gram() -> torch.Tensor:
        c = (v @ v.T) / norm
        out = c @ b
        sync()
        return out

    thin()
    gram()  # warm-up
    t_thin, r_thin = _time(thin, args.repeats)
    t_gram, r_gram = _time(gram, args.repeats)
    flops_thin = 2 * 2 * args.d * args.d * args.r
    flops_gram = 2 * args.d**3 + 2 * args.d * args.d * args.r
    scale = float(r_gram.abs().max())
    print(f"device {args.device}, threads {torch.get_num_threads()}, d={args.d}, r={args.r}")
    print(
        f"V·(Vᵀ·B)/‖V‖ : {t_thin * 1e3:9.2f} ms  {flops_thin / 1e9:8.2f} GFLOP  "
        f"extra memory {args.d * args.r * 4 / 2**20:8.2f} MiB (Vᵀ·B)"
    )
    print(
        f"C=V·Vᵀ/‖V‖, C·B: {t_gram * 1e3:9.2f} ms  {flops_gram / 1e9:8.2f} GFLOP  "
        f"extra memory {args.d * args.d * 4 / 2**20:8.2f} MiB (C)"
    )
    print(
        f"speed-up {t_gram / t_thin:.1f}x; max |difference| / max |C·B| = "
        f"{float((r_thin - r_gram).abs().max()) / scale:.2e}"
    )


if __name__ == "__main__":
    main()
