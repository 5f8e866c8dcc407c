"""Calibration inputs besides chat rows: raw text and token ids given as they are.

Chat rows (prompt + response) are rendered, tokenised and padded by :mod:`realignkit.chat`, the
one chat format of every pass; its names are re-exported here for the Fisher and calibration
code that reads them from this module. The two other ways in are raw text
(:func:`encode_text`) and token ids given as they are (:func:`encode_ids`), so a run can use
exactly the tokens a fine-tune saw.
"""

from __future__ import annotations

from typing import Any

from realignkit.chat import (
    IGNORE,
    RESPONSE_ENDS,
    Encoded,
    encode_chat,
    make_batches,
    pad_batch,
    pad_id_of,
)
from realignkit.errors import RealignError

__all__ = [
    "IGNORE",
    "RESPONSE_ENDS",
    "Encoded",
    "encode_chat",
    "encode_ids",
    "encode_text",
    "make_batches",
    "pad_batch",
    "pad_id_of",
]


def encode_text(tokenizer: Any, text: str, *, max_length: int = 512) -> Encoded:
    """Raw text, tokenised with the tokenizer's own special tokens (BOS where it adds one)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:max_length]
    return Encoded(ids=ids, response_start=0)


def encode_ids(
    ids: Any, *, max_length: int = 512, vocab_size: int | None = None, where: str = "row"
) -> Encoded:
    """Token ids given by the user, checked (a list of ints inside the vocabulary), truncated."""
    if not isinstance(ids, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise RealignError(f"{where}: input_ids must be a list of integers")
    bad = [i for i in ids if i < 0 or (vocab_size is not None and i >= vocab_size)]
    if bad:
        raise RealignError(
            f"{where}: token id {bad[0]} is outside the model's vocabulary of {vocab_size}"
        )
    return Encoded(ids=list(ids)[:max_length], response_start=0)
