"""Diagonal Fisher "safety importance" of the aligned model's weights (IRR, step 1).

For harmful prompts paired with safe responses (refusals), the loss is the cross-entropy of
the response tokens only: how strongly each weight holds up the refusal. Two estimates:

- ``per-sample``: the mean over samples of the squared per-sample gradient, the textbook
  empirical Fisher diagonal ``E[(∂ℓ_i/∂θ)²]`` (one backward pass per sample);
- ``per-batch``: the mean over mini-batches of the squared mini-batch gradient, where the batch
  loss is the mean over all its response tokens, as the official IRR code computes it (one
  backward pass per batch; with batch size 1 it equals ``per-sample``).

Only the weights IRR edits get gradients and accumulators (fp32, on the model's device); the
squared gradient is folded in by a post-accumulate hook and the gradient freed at once, so no
full gradient copy is ever held. Scores are saved under the model's tensor names as
safetensors shards with ``fisher.json`` describing how they were made.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from realignkit.calib.blocks import LinearLayer, decoder_linears, select_modules
from realignkit.calib.text import IGNORE, Encoded, encode_chat, make_batches, pad_batch, pad_id_of
from realignkit.checkpoint.artifact import FISHER_FILE, FISHER_FORMAT
from realignkit.checkpoint.artifact import FisherScores as FisherScores  # its reader, here too
from realignkit.errors import RealignError
from realignkit.modeling import input_device

log = logging.getLogger(__name__)

FISHER_MODES = ("per-sample", "per-batch")
META_FILE, FORMAT = FISHER_FILE, FISHER_FORMAT
PathLike = str | os.PathLike[str]


def response_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens of a batch."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    return nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="mean",
    )


def diagonal_fisher(
    model: nn.Module,
    examples: Sequence[Encoded],
    layers: Sequence[LinearLayer],
    *,
    mode: str = "per-sample",
    batch_size: int = 8,
    pad_id: int = 0,
    max_accumulator_bytes: int | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Fisher diagonal of each layer's weight (fp32, the weight's own orientation).

    ``examples`` must each hold at least one response token. With ``max_accumulator_bytes``,
    the layers are split into groups whose fp32 accumulators fit that budget and the data are
    passed once per group (finished groups move to the CPU): a 7B model's 26 GB of accumulators
    need not sit beside its weights on one GPU, at the price of more passes.
    """
    groups = _accumulator_groups(layers, max_accumulator_bytes)
    if len(groups) == 1:
        return _fisher_pass(model, examples, layers, mode, batch_size, pad_id, progress)
    scores: dict[str, torch.Tensor] = {}
    for group in groups:
        part = _fisher_pass(model, examples, group, mode, batch_size, pad_id, progress)
        scores.update({name: t.cpu() for name, t in part.items()})
    return scores


def _accumulator_groups(
    layers: Sequence[LinearLayer], max_bytes: int | None
) -> list[list[LinearLayer]]:
    """Consecutive layers in groups of at most ``max_bytes`` fp32 accumulators (≥ 1 layer)."""
    if not max_bytes:
        return [list(layers)]
    groups: list[list[LinearLayer]] = [[]]
    used = 0
    for layer in layers:
        size = layer.module.weight.numel() * 4
        if groups[-1] and used + size > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(layer)
        used += size
    return groups


def _fisher_pass(
    model: nn.Module,
    examples: Sequence[Encoded],
    layers: Sequence[LinearLayer],
    mode: str,
    batch_size: int,
    pad_id: int,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """One pass over the data accumulating the squared gradients of ``layers``."""
    if mode not in FISHER_MODES:
        raise RealignError(f"unknown Fisher mode {mode!r}; use one of {', '.join(FISHER_MODES)}")
    if not examples:
        raise RealignError("no harmful examples with a response to compute Fisher scores on")
    device = input_device(model)
    units = (
        [pad_batch([ex], pad_id) for ex in examples]
        if mode == "per-sample"
        else make_batches(examples, batch_size, pad_id)
    )
    weights = {layer.weight_name: layer.module.weight for layer in layers}
    sums = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    was_trainable = {id(p): p.requires_grad for p in model.parameters()}
    handles = []

    def fold(name: str):
        def hook(param: torch.Tensor) -> None:
            sums[name].add_(param.grad.float().square())
            param.grad = None

        return hook

    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, weight in weights.items():
            weight.requires_grad_(True)
            handles.append(weight.register_post_accumulate_grad_hook(fold(name)))
        steps = 0
        for unit in tqdm(units, desc=f"fisher ({mode})", disable=not progress):
            if not bool((unit["labels"][:, 1:] != IGNORE).any()):
                continue
            logits = model(
                input_ids=unit["input_ids"].to(device),
                attention_mask=unit["attention_mask"].to(device),
                use_cache=False,
            ).logits
            response_loss(logits, unit["labels"].to(device)).backward()
            steps += 1
    finally:
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            p.requires_grad_(was_trainable[id(p)])
            p.grad = None
    if steps == 0:
        raise RealignError("no harmful example has a response token left after truncation")
    return {name: total / steps for name, total in sums.items()}


def _greedy_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
) -> list[str]:
    """The aligned model's own safe responses: greedy answers from the one generator
    (:class:`~realignkit.eval.generate.HFGenerator`: the chat format, left-padded batches),
    trimmed, since a response is rendered after the prompt with its own leading space."""
    from realignkit.chat import render_prompt
    from realignkit.eval.generate import GenerationSettings, HFGenerator

    generator = HFGenerator(model, tokenizer)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    texts = [render_prompt(tokenizer, p) for p in prompts]
    answers: list[str] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="generate safe responses", disable=not progress):
        batch = generator.generate(texts[start : start + batch_size], settings)
        answers += [samples[0].strip() for samples in batch]
    return answers


def _read_harmful(
    path: PathLike,
    *,
    prompt_column: str,
    response_column: str,
    need_responses: bool,
    limit: int | None,
    seed: int,
) -> list[dict[str, Any]]:
    from realignkit.data import read_prompts, read_rows

    if need_responses and response_column not in read_rows(path)[0]:
        raise RealignError(
            f"{path}: no column {response_column!r} with safe responses; "
            "pass --generate-responses to let the aligned model write them"
        )
    return read_prompts(
        path,
        prompt_column=prompt_column,
        response_column=response_column if need_responses else None,
        limit=limit,
        seed=seed,
    )


def compute_fisher(
    model: PathLike,
    harmful: PathLike,
    out: PathLike,
    *,
    mode: str = "per-sample",
    modules: list[str] | None = None,
    generate: bool = False,
    num_samples: int | None = 128,
    max_length: int = 512,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    max_accumulator_gib: float | None = None,
    prompt_column: str = "prompt",
    response_column: str = "response",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    overwrite: bool = False,
    max_shard_size: str | int = "1GB",
    progress: bool = True,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[str, Any] | None = None,
) -> Path:
    """`realignkit fisher`: score the aligned model ``model`` on ``harmful`` and write ``out``."""
    from realignkit.checkpoint import CheckpointWriter
    from realignkit.modeling import load_causal_lm, load_tokenizer

    if mode not in FISHER_MODES:
        raise RealignError(f"unknown --mode {mode!r}; use one of {', '.join(FISHER_MODES)}")
    rows = _read_harmful(
        harmful,
        prompt_column=prompt_column,
        response_column=response_column,
        need_responses=not generate,
        limit=num_samples,
        seed=seed,
    )
    writer = CheckpointWriter(out, overwrite=overwrite, max_shard_size=max_shard_size)
    tokenizer = load_tokenizer(model)
    lm = load_causal_lm(
        model, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory
    )
    if any(p.device.type == "meta" for p in lm.parameters()):
        # accelerate loads disk-offloaded weights into temporaries for each forward pass;
        # their gradients never reach the parameters the accumulators watch
        raise RealignError(
            "Fisher scores need the gradients of weights held in memory: --device-map may "
            "place modules on GPUs and the CPU, not on disk (raise --max-memory or add GPUs)"
        )
    layers = select_modules(decoder_linears(lm), modules)
    prompts = [str(r["prompt"]) for r in rows]
    if generate:
        responses = _greedy_answers(lm, tokenizer, prompts, max_new_tokens, batch_size, progress)
    else:
        responses = [str(r["response"]) for r in rows]
    encoded = [
        encode_chat(tokenizer, p, r, max_length=max_length)
        for p, r in zip(prompts, responses, strict=True)
    ]
    usable = [e for e in encoded if e.response_tokens > 0]
    if not usable:
        raise RealignError(
            f"{harmful}: no sample keeps a response token within --max-length {max_length}"
        )
    if len(usable) < len(encoded):
        log.warning("%d samples without response tokens skipped", len(encoded) - len(usable))
    scores = diagonal_fisher(
        lm,
        usable,
        layers,
        mode=mode,
        batch_size=batch_size,
        pad_id=pad_id_of(tokenizer),
        max_accumulator_bytes=int(max_accumulator_gib * 2**30) if max_accumulator_gib else None,
        progress=progress,
    )
    from realignkit.checkpoint import ensure_finite

    for name, tensor in scores.items():
        # NaN/Inf gradients (an fp16 overflow, a broken model) would rank nothing: refuse.
        ensure_finite(tensor, name, f"the Fisher scores of {str(model)!r} (try --dtype fp32)")
    model_dir = Path(getattr(lm, "name_or_path", "") or model)
    meta = {
        "model": str(model),
        "architecture": (lm.config.architectures or [lm.config.model_type])[0],
        "mode": mode,
        "batch_size": batch_size if mode == "per-batch" else 1,
        "samples": len(usable),
        "response_tokens": sum(e.response_tokens for e in usable),
        "max_length": max_length,
        "generated_responses": generate,
        "data": str(harmful),
        "modules": sorted({layer.short.split(".")[-1] for layer in layers}),
    }
    files = None
    if generate:
        pairs = zip(prompts, responses, strict=True)
        lines = [json.dumps({"prompt": p, "response": r}) for p, r in pairs]
        files = {"responses.jsonl": "\n".join(lines) + "\n"}
    FisherScores.write(
        writer,
        lambda name: ({name: scores[name].cpu()}, list(scores[name].shape)),
        list(scores),
        meta=meta,
        inputs={"model": model_dir, "harmful data": harmful},
        files=files,
    )
    return Path(out)
