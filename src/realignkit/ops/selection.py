"""Which tensors a weight edit touches, decided from names and shapes alone.

Safety lives in the decoder blocks: RESTA, DARE and IRR edit the 2-D weights of the blocks by
default, and leave embeddings, norms, biases and the LM head alone unless asked. Blocks are
recognised by the numbered ModuleList in the name (``model.layers.3.``, ``transformer.h.3.``,
``blocks.3.``), which covers every decoder architecture in transformers without a table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BLOCK_NAME = re.compile(r"(^|\.)(layers|layer|h|blocks|block)\.\d+\.")
EXTRA_KINDS = ("embeddings", "norms", "biases", "lm_head", "other")


def tensor_kind(name: str, ndim: int) -> str:
    """``block_weight``, ``embeddings``, ``norms``, ``biases``, ``lm_head`` or ``other``."""
    leaf = name.rsplit(".", 2)
    if name.startswith("lm_head.") or ".lm_head." in name:
        return "lm_head"
    if "embed" in name or re.search(r"(^|\.)(wte|wpe)\.", name):
        return "embeddings"
    if ndim >= 2:
        return "block_weight" if BLOCK_NAME.search(name) else "other"
    if any(part in name for part in ("norm", "ln_", ".ln", "layernorm")):
        return "norms"
    if leaf[-1] == "bias" or name.endswith(".bias"):
        return "biases"
    return "norms"  # remaining 1-D tensors are scales of some norm


def parse_include(include: Iterable[str] | str | None) -> frozenset[str]:
    """Normalise extra tensor kinds (comma lists allowed); ``all`` means every kind."""
    if include is None:
        return frozenset()
    items = [include] if isinstance(include, str) else list(include)
    kinds: set[str] = set()
    for item in items:
        for part in str(item).split(","):
            part = part.strip().lower().replace("-", "_")
            if not part:
                continue
            if part == "all":
                kinds.update(EXTRA_KINDS)
            elif part in EXTRA_KINDS:
                kinds.add(part)
            else:
                raise ValueError(
                    f"unknown tensor kind {part!r}; kinds: {', '.join(EXTRA_KINDS)} or all"
                )
    return frozenset(kinds)


def is_selected(name: str, ndim: int, include: frozenset[str], floating: bool = True) -> bool:
    """Whether a tensor is edited: floating point and of the default or an included kind."""
    if not floating:
        return False
    kind = tensor_kind(name, ndim)
    return kind == "block_weight" or kind in include
