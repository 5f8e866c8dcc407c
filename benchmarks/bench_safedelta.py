"""Safe Delta on SmolLM2-135M-Instruct (CPU): wall time, share of the delta kept, and how much
of the fine-tune's change of the layer outputs on safety data is left.

The "fine-tune" is the real model plus Gaussian noise (σ = 2 % of each tensor's RMS): enough
to exercise the whole pipeline on a real architecture and tokenizer; it says nothing about
safety itself (that is the demo's and the real-world benchmark's job).

    python benchmarks/bench_safedelta.py [--samples 64] [--budget 0.1]

Output errors are Σ over layers of the mean squared change of the layer outputs on the
safety data, relative to the aligned layer (``ops.obs.output_error``), for θ_F, for the kept
delta alone (reset, no compensation) and for Safe Delta's result.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from realignkit.api import realign
    from realignkit.checkpoint import CheckpointReader, CheckpointWriter
    from realignkit.checkpoint.gguf import smollm2_folder
    from realignkit.data import read_rows

    aligned = smollm2_folder()
    work = Path(tempfile.mkdtemp(prefix="bench-safedelta-"))
    generator = torch.Generator().manual_seed(0)
    with CheckpointReader(aligned) as ckpt, CheckpointWriter(work / "F") as out:
        for name in ckpt.names:
            w = ckpt.get(name)
            if w.is_floating_point() and w.ndim == 2:
                noise = torch.randn(w.shape, generator=generator) * w.float().pow(2).mean().sqrt()
                w = (w.float() + 0.02 * noise).to(w.dtype)
            out.add(name, w)
        out.copy_support_files(aligned)
    questions = read_rows(SHARED / "harmful" / "catqa_english.json")
    rows = [
        {"prompt": q["prompt"], "response": "I cannot help with that request."}
        for q in questions[: args.samples]
    ]
    data = work / "safety.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    for selection in ("official", "paper"):
        start = time.perf_counter()
        result = realign(
            "safedelta",
            work / f"out-{selection}",
            finetuned=work / "F",
            aligned=aligned,
            safety_data=data,
            budget=args.budget,
            selection=selection,
            num_samples=args.samples,
            device="cpu",
        )
        seconds = time.perf_counter() - start
        stats = result.stats.values()
        kept = sum(s["kept"] for s in stats) / sum(s["entries"] for s in stats)
        total = {
            k: sum(s[k] for s in stats)
            for k in ("output_error_finetuned", "output_error_reset", "output_error")
        }
        print(
            f"{selection:8s} s={args.budget:g} n={args.samples} layers={len(result.stats)}: "
            f"{seconds:.1f} s, kept {100 * kept:.2f}% of delta entries; output error vs aligned "
            f"(sum over layers): fine-tune {total['output_error_finetuned']:.4g}, kept delta "
            f"alone {total['output_error_reset']:.4g} "
            f"({total['output_error_reset'] / total['output_error_finetuned']:.3g}x), "
            f"Safe Delta {total['output_error']:.4g} "
            f"({total['output_error'] / total['output_error_finetuned']:.3g}x)"
        )


if __name__ == "__main__":
    main()
