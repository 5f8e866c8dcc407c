"""Benchmark IRR's two heavy phases on random weights: Fisher scores and layer-wise recalibration.

Timing does not depend on the weight values, so a randomly initialised model of the right shape
stands in for a real checkpoint (no download, no disk I/O: this measures compute and memory).

    python benchmarks/bench_irr.py --shape llama-7b      # on a GPU: the issue's target setting
    python benchmarks/bench_irr.py                        # --shape small, on the CPU
    python benchmarks/bench_irr.py --modes fixed,adaptive,official --skip-fisher

Phases (each timed, with peak memory):
  fisher       per-sample (or per-batch) diagonal Fisher of every block linear weight over
               --fisher-samples harmful samples of --seq-len tokens, response = second half;
  recalibrate  the whole layer-by-layer pass over --calib-samples samples of --seq-len tokens:
               capture block inputs, Hessians per input group, identify (sign conflict + top-R
               per 128-column block on a synthetic delta, safety vector and Fisher), OBS sweep
               of all seven linears of every block, re-run of the edited block; once per
               --modes entry, each on a freshly built model with the same synthetic inputs:
                 fixed     realignkit's default: the mask chosen once, then the sweep;
                 adaptive  each block's mask chosen inside the sweep on the updated delta;
                 official  adaptive plus the official ties, rounding, zeros, dead columns.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
import zlib
from contextlib import contextmanager

import torch
from shapes import LLAMA_SHAPES

SHAPES = LLAMA_SHAPES


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=False, **SHAPES[shape])
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def cpu_peak_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@contextmanager
def phase(name: str, device: torch.device, results: dict):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    entry: dict = {}
    yield entry
    if device.type == "cuda":
        torch.cuda.synchronize()
        entry["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    entry["seconds"] = round(time.perf_counter() - start, 2)
    entry["peak_cpu_rss_gib_so_far"] = round(cpu_peak_gib(), 2)
    results[name] = entry


def random_examples(count: int, length: int, vocab: int, seed: int):
    from realignkit.calib.text import Encoded

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (count, length), generator=gen)
    return [Encoded(ids=row.tolist(), response_start=length // 2) for row in ids]


def _official(**kw):
    from realignkit.methods.irr import IRRSettings

    return IRRSettings.official(**kw)


def _adaptive(**kw):
    from realignkit.methods.irr import IRRSettings

    return IRRSettings(mask_selection="adaptive", **kw)


def _fixed(**kw):
    from realignkit.methods.irr import IRRSettings

    return IRRSettings(**kw)


MODES = {"fixed": _fixed, "adaptive": _adaptive, "official": _official}


def recalibration_phase(model, batches, settings, mode, device, results, timed_parts) -> None:
    """The whole layer-by-layer pass of one mode on synthetic delta, safety vector and Fisher
    (seeded by layer name, so every mode sees the same inputs)."""
    from realignkit.calib.hessian import edit_blockwise

    identify, recalibrate, recalibrate_adaptive = timed_parts
    kernel_seconds = {"identify": 0.0, "obs": 0.0, "synthetic inputs": 0.0}
    counts = {"layers": 0, "removed": 0}

    def timed(key: str, fn, *args):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        kernel_seconds[key] += time.perf_counter() - start
        return out

    def edit_block(index, layers, hessians):
        for layer in layers:
            weight = layer.to_kernel(layer.module.weight.detach()).float()

            def synthetic(weight=weight, name=layer.name):
                gen = torch.Generator(device=device).manual_seed(zlib.crc32(name.encode()))
                make = lambda: torch.randn(weight.shape, generator=gen, device=device)  # noqa: E731
                return 0.01 * make(), make(), make().abs()

            delta, safety, fisher = timed("synthetic inputs", synthetic)
            hessian = hessians[layer.name]
            if settings.mask_selection == "adaptive":
                # Identification is a step of the sweep here: one timing for both.
                new_delta, unsafe, _ = timed(
                    "obs", recalibrate_adaptive, delta, safety, fisher, hessian, settings
                )
            else:
                unsafe, _ = timed("identify", identify, delta, safety, fisher, settings)
                new_delta = timed("obs", recalibrate, delta, unsafe, hessian, settings)
            layer.set_weight(weight - delta + new_delta)
            counts["layers"] += 1
            counts["removed"] += int(unsafe.sum())

    with phase(f"recalibrate ({mode})", device, results) as entry:
        edit_blockwise(model, batches, edit_block, device=device, progress=False)
        if settings.mask_selection == "adaptive":
            kernel_seconds.pop("identify")  # timed as part of "obs"
        entry.update({k + " seconds": round(v, 2) for k, v in kernel_seconds.items()})
        entry.update(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 512 (7b), 128 (small)")
    parser.add_argument("--fisher-samples", type=int, default=None, help="default 128 (7b), 16")
    parser.add_argument("--calib-samples", type=int, default=None, help="default 128 (7b), 32")
    parser.add_argument("--fisher-mode", default="per-sample", choices=["per-sample", "per-batch"])
    parser.add_argument("--fisher-modules", default=None, help="e.g. q_proj,v_proj (default all)")
    parser.add_argument(
        "--max-accumulator-gib",
        type=float,
        default=None,
        help="Fisher accumulators on the device at once (more passes)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rho", type=float, default=0.5)
    parser.add_argument("--refine-steps", type=int, default=0)
    parser.add_argument("--skip-fisher", action="store_true")
    parser.add_argument(
        "--modes",
        default="fixed,adaptive",
        help="comma list of recalibration modes: fixed, adaptive, official",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    from realignkit.calib.blocks import decoder_linears, select_modules
    from realignkit.calib.fisher import diagonal_fisher
    from realignkit.calib.text import make_batches
    from realignkit.methods.irr import identify, recalibrate, recalibrate_adaptive
    from realignkit.modeling import default_device, default_dtype, parse_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    dtype = parse_dtype(args.dtype) or default_dtype(device)
    big = args.shape != "small"
    seq_len = args.seq_len or (512 if big else 128)
    fisher_samples = args.fisher_samples or (128 if big else 16)
    calib_samples = args.calib_samples or (128 if big else 32)
    results: dict = {
        "shape": args.shape,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "seq_len": seq_len,
        "fisher_samples": fisher_samples,
        "calib_samples": calib_samples,
        "fisher_mode": args.fisher_mode,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)

    with phase("build random model", device, results):
        model = build_model(args.shape, device, dtype)
    vocab = model.config.vocab_size

    if not args.skip_fisher:
        layers = select_modules(
            decoder_linears(model), args.fisher_modules.split(",") if args.fisher_modules else None
        )
        examples = random_examples(fisher_samples, seq_len, vocab, seed=1)
        with phase("fisher", device, results) as entry:
            cap = int(args.max_accumulator_gib * 2**30) if args.max_accumulator_gib else None
            scores = diagonal_fisher(
                model,
                examples,
                layers,
                mode=args.fisher_mode,
                batch_size=args.batch_size,
                max_accumulator_bytes=cap,
                progress=False,
            )
            entry["weights_scored"] = sum(t.numel() for t in scores.values())
        del scores

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; use {', '.join(MODES)}")
    batches = make_batches(
        random_examples(calib_samples, seq_len, vocab, seed=2), args.batch_size, pad_id=0
    )
    for mode in modes:
        if model is None:
            model = build_model(args.shape, device, dtype)
        settings = MODES[mode](rho=args.rho, refine_steps=args.refine_steps)
        parts = (identify, recalibrate, recalibrate_adaptive)
        recalibration_phase(model, batches, settings, mode, device, results, parts)
        model = None  # the next mode starts from the same random weights, freshly built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        total = results[f"recalibrate ({mode})"]["seconds"]
        total -= results[f"recalibrate ({mode})"]["synthetic inputs seconds"]
        if "fisher" in results:
            total += results["fisher"]["seconds"]
        results[f"IRR total seconds, {mode} (fisher + recalibrate, without synthetic inputs)"] = (
            round(total, 2)
        )
    if "fixed" in modes:
        fixed = results["recalibrate (fixed)"]["seconds"]
        for mode in modes:
            if mode != "fixed":
                seconds = results[f"recalibrate ({mode})"]["seconds"]
                results[f"recalibrate time ratio {mode} / fixed"] = round(seconds / fixed, 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
