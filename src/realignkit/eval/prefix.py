"""A batch's shared prompt prefix, run once: the KV cache of the common start of its rows.

Every rendered prompt of an evaluation starts with the same tokens (the chat template's system
block, SmolLM2's default system prompt among them, and the user-turn header): often close to
half of a prompt. The model runs that prefix once for a batch of one, the cache is repeated
to the batch, and only each row's rest goes through the model. Generation passes
``[prefix][padding][rest]`` with an attention mask of 1/0/1, whose cumulative sum (the position
ids ``generate`` derives) continues after the prefix; a right-padded loss pass gives the rest
the positions after the prefix. Every real token keeps the position it has in the plain
padded batch, so the outputs are the plain path's.

Sharing is only taken where that holds: a decoder-only model whose forward takes position ids
and a cache, with the default dynamic cache (no ``cache_implementation``), no sliding window or
attention chunk shorter than the sequence (a window counts cache columns, and the padding
moved behind the prefix would shift what it covers), and a cache whose layers can be repeated
along the batch. Anything else runs the plain path.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row has in common."""
    if not rows:
        return 0
    first = rows[0]
    shared = min(len(r) for r in rows)
    for row in rows[1:]:
        n = 0
        while n < shared and row[n] == first[n]:
            n += 1
        shared = n
    return shared


def _forward_parameters(model: Any) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def cache_argument(model: Any) -> str:
    """The keyword a cache is passed under (``cache`` from transformers 5, else
    ``past_key_values``)."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def supports_prefix_sharing(model: Any, total_length: int) -> bool:
    """Whether a prefix cache gives this model the plain path's outputs for sequences of up to
    ``total_length`` tokens (prompt and generated tokens)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    parameters = _forward_parameters(model)
    if "position_ids" not in parameters:  # positions would follow the cache, not the mask
        return False
    if not ({"cache", "past_key_values"} & parameters):
        return False
    supports_dynamic = getattr(model, "_supports_default_dynamic_cache", None)
    if supports_dynamic is not None and not supports_dynamic():
        return False
    if getattr(model.generation_config, "cache_implementation", None) is not None:
        return False
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field in ("sliding_window", "attention_chunk_size"):
        window = getattr(text_config, field, None)
        if isinstance(window, int) and window < total_length:
            return False
    return True


def shared_prefix_length(
    model: Any,
    rows: Sequence[Sequence[int]],
    *,
    copies: int = 1,
    total_length: int,
    limit: int | None = None,
) -> int:
    """The number of leading tokens to run once for ``rows`` (each repeated ``copies`` times),
    or 0 for the plain path.

    At least one token of every row is left to the batched pass (it gives each row its own
    next-token logits); ``limit`` caps the prefix further (a loss pass needs the logits from
    the token before each response on).
    """
    if len(rows) * copies < 2:  # nothing to share
        return 0
    shared = min(common_prefix_length(rows), min(len(r) for r in rows) - 1)
    if limit is not None:
        shared = min(shared, limit)
    if shared < 1 or not supports_prefix_sharing(model, total_length):
        return 0
    return shared


def _expandable(cache: Any) -> bool:
    from transformers import cache_utils

    if not isinstance(cache, cache_utils.DynamicCache):
        return False
    layers = getattr(cache, "layers", None)
    if layers is None:  # transformers 4.x: key and value lists, repeated by the cache itself
        return True
    # exact classes: quantized, offloaded or linear-attention layers keep other state
    names = ("DynamicLayer", "DynamicSlidingWindowLayer")
    allowed = {getattr(cache_utils, n) for n in names if hasattr(cache_utils, n)}
    return all(type(layer) in allowed for layer in layers)


def prefix_cache(
    model: Any, prefix: Sequence[int], batch_size: int, *, grad: bool = False
) -> Any | None:
    """The model's cache after ``prefix`` (one forward of a batch of one), repeated to
    ``batch_size`` rows; None when this cache cannot be repeated (then run the plain path).

    With ``grad`` the forward is recorded for autograd (a training step): the repeat is
    differentiable, its backward sums the rows' gradients, so the step's gradients are the
    plain batch's."""
    from realignkit.modeling import input_device

    ids = torch.tensor([list(prefix)], dtype=torch.long, device=input_device(model))
    with torch.enable_grad() if grad else torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or not _expandable(cache):
        return None
    cache.batch_repeat_interleave(batch_size)
    return cache


def run_shared_prefix(
    model: Any,
    rows: Sequence[Sequence[int]],
    *,
    copies: int = 1,
    total_length: int,
    limit: int | None = None,
) -> tuple[int, Any | None]:
    """The shared prefix's length and its cache for ``len(rows) * copies`` rows, or
    ``(0, None)`` for the plain path (arguments as :func:`shared_prefix_length`)."""
    shared = shared_prefix_length(
        model, rows, copies=copies, total_length=total_length, limit=limit
    )
    cache = prefix_cache(model, rows[0][:shared], len(rows) * copies) if shared else None
    return (shared, cache) if cache is not None else (0, None)


def with_prefix(
    prefix: Sequence[int], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix's ids and a mask of ones put before padded rows of the rest."""
    rows = input_ids.shape[0]
    head = torch.tensor([list(prefix)], dtype=input_ids.dtype).expand(rows, -1)
    ones = torch.ones(rows, len(prefix), dtype=attention_mask.dtype)
    return torch.cat([head, input_ids], dim=1), torch.cat([ones, attention_mask], dim=1)
