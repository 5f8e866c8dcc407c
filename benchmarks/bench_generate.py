"""Generation throughput (new tokens per second) by batch size, for the HF and vLLM backends.

Builds a random Llama-shaped model (speed does not depend on the weights), feeds it random
prompts of a fixed length and forces every answer to the full ``--new-tokens`` (no EOS), so
each batch size does the same work per prompt. The HF numbers go through realignkit's own
generator (left padding, the same ``generate`` call `realignkit eval` makes); vLLM runs when
it is installed and a GPU is present, on the same weights saved to a temporary folder.

    python benchmarks/bench_generate.py                                  # small shape, CPU
    python benchmarks/bench_generate.py --shape llama-7b --batch-sizes 1,8,32,128   # GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
import types

import torch
from shapes import LLAMA_SHAPES

from realignkit.eval.generate import GenerationSettings, HFGenerator

SHAPES = LLAMA_SHAPES


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    """A random LlamaForCausalLM of the given shape, built directly on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = None  # every answer runs to the full length
    return model.eval()


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (count, length), generator=gen).tolist()


def bench_hf(model, args, batch_sizes: list[int]) -> list[tuple[int, float, float]]:
    """(batch size, seconds, new tokens per second) through realignkit's HF generator."""
    stand_in_tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token_id=None)
    generator = HFGenerator(model, stand_in_tokenizer, "bench")
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    vocab = model.config.vocab_size
    generator.generate_ids(random_prompts(1, args.prompt_len, vocab, 0), settings)  # warm-up
    rows = []
    for batch in batch_sizes:
        prompts = random_prompts(batch * args.batches, args.prompt_len, vocab, batch)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        produced = 0
        for i in range(0, len(prompts), batch):
            out = generator.generate_ids(prompts[i : i + batch], settings)
            produced += sum(len(samples[0]) for samples in out)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows.append((batch, seconds, produced / seconds))
    return rows


def bench_vllm(model, args, batch_sizes: list[int]) -> list[tuple[int, float, float]]:
    """The same measurement with vLLM's offline engine on the saved weights."""
    from vllm import LLM, SamplingParams

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as folder:
        model.save_pretrained(folder)
        llm = LLM(model=folder, skip_tokenizer_init=True, dtype=args.dtype, seed=0)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=args.new_tokens,
            min_tokens=args.new_tokens,
            ignore_eos=True,
            detokenize=False,
        )
        vocab = model.config.vocab_size
        warm = [{"prompt_token_ids": ids} for ids in random_prompts(1, args.prompt_len, vocab, 0)]
        llm.generate(warm, params, use_tqdm=False)
        for batch in batch_sizes:
            prompts = random_prompts(batch * args.batches, args.prompt_len, vocab, batch)
            start = time.perf_counter()
            produced = 0
            for i in range(0, len(prompts), batch):
                chunk = [{"prompt_token_ids": ids} for ids in prompts[i : i + batch]]
                outs = llm.generate(chunk, params, use_tqdm=False)
                produced += sum(len(o.outputs[0].token_ids) for o in outs)
            seconds = time.perf_counter() - start
            rows.append((batch, seconds, produced / seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default=None,
        help="model shape (default: small on CPU, llama-7b on GPU)",
    )
    parser.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, default=2, help="batches timed per batch size")
    parser.add_argument("--backends", default="auto", help="hf, vllm, or auto (vllm when present)")
    parser.add_argument("--dtype", default=None, help="bfloat16 / float32 (default per device)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.shape = args.shape or ("llama-7b" if device.type == "cuda" else "small")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    default_sizes = "1,8,32,128" if device.type == "cuda" else "1,4,16"
    batch_sizes = [int(b) for b in (args.batch_sizes or default_sizes).split(",")]
    backends = (
        args.backends.split(",")
        if args.backends != "auto"
        else ["hf"]
        + (["vllm"] if device.type == "cuda" and importlib.util.find_spec("vllm") else [])
    )
    model = build_model(args.shape, device, getattr(torch, args.dtype))
    params = sum(p.numel() for p in model.parameters())
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"shape {args.shape} ({params / 1e6:.1f} M parameters, {args.dtype}) on {name}; "
        f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, "
        f"{args.batches} batches per size"
    )
    print("| backend | batch size | seconds | new tokens/s |")
    print("| --- | --- | --- | --- |")
    for backend in backends:
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            print("| vllm | – | – | not installed |")
            continue
        rows = (
            bench_hf(model, args, batch_sizes)
            if backend == "hf"
            else bench_vllm(model, args, batch_sizes)
        )
        for batch, seconds, rate in rows:
            print(f"| {backend} | {batch} | {seconds:.2f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
