"""Turning prompt (+ response) rows into token batches for Fisher and calibration passes.

A row becomes one chat turn: the user prompt through the tokenizer's chat template with the
generation prompt, then the assistant response and the template's end of turn. The response
start is remembered so a loss can be restricted to response tokens. Without a chat template,
the prompt is followed by a newline and the response by the EOS token.

Two other ways in, for calibration data: raw text (:func:`encode_text`) and token ids given
as they are (:func:`encode_ids`), so a run can use exactly the tokens a fine-tune saw.
Batches are right-padded with padding masked out (the default), or left-padded to a fixed
width with padding attended like any token (the official IRR code's calibration batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from realignkit.errors import RealignError

IGNORE = -100
RESPONSE_ENDS = ("template", "eos")


@dataclass
class Encoded:
    """Token ids of one row and where its response starts (``len(ids)`` when none)."""

    ids: list[int]
    response_start: int

    @property
    def response_tokens(self) -> int:
        return len(self.ids) - self.response_start


def _chat_messages(tokenizer: Any, prompt: str, system_prompt: str | None) -> list[dict]:
    """The user turn, after a system turn when given; folded into the user turn when the
    template rejects a system role (as :func:`realignkit.eval.generate.format_prompt` does)."""
    user = [{"role": "user", "content": prompt}]
    if not system_prompt:
        return user
    with_system = [{"role": "system", "content": system_prompt}, *user]
    try:
        tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates raise their own errors for a system turn
        return [{"role": "user", "content": f"{system_prompt}\n\n{prompt}"}]
    return with_system


def _chat_texts(
    tokenizer: Any, prompt: str, response: str | None, system_prompt: str | None = None
) -> tuple[str, str] | None:
    """Prompt text (with generation prompt) and response text from the chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    user = _chat_messages(tokenizer, prompt, system_prompt)
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if response is None:
        return prompt_text, ""
    full = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": response}], tokenize=False
    )
    if full.startswith(prompt_text):
        return prompt_text, full[len(prompt_text) :]
    return prompt_text, response + (tokenizer.eos_token or "")


def encode_chat(
    tokenizer: Any,
    prompt: str,
    response: str | None = None,
    *,
    max_length: int = 512,
    system_prompt: str | None = None,
    response_end: str = "template",
) -> Encoded:
    """One row as token ids (truncated to ``max_length``) with its response start.

    ``system_prompt`` adds a system turn. ``response_end="eos"`` renders only the prompt with
    the template, then appends the response's own tokens and the EOS token id, instead of the
    template's assistant turn.
    """
    if response_end not in RESPONSE_ENDS:
        raise RealignError(f"unknown response end {response_end!r}; use {RESPONSE_ENDS}")
    templated = response if response_end == "template" else None
    texts = _chat_texts(tokenizer, prompt, templated, system_prompt)
    if texts is None:
        system = f"{system_prompt}\n\n" if system_prompt else ""
        prompt_ids = tokenizer(system + prompt + "\n", add_special_tokens=True)["input_ids"]
        response_text = "" if templated is None else templated + (tokenizer.eos_token or "")
    else:
        prompt_ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
        response_text = texts[1]
    response_ids = (
        tokenizer(response_text, add_special_tokens=False)["input_ids"] if response_text else []
    )
    if response is not None and response_end == "eos":
        if tokenizer.eos_token_id is None:
            raise RealignError("the tokenizer has no EOS token to end the response with")
        response_ids = [*tokenizer(response, add_special_tokens=False)["input_ids"]]
        response_ids.append(int(tokenizer.eos_token_id))
    ids = (list(prompt_ids) + list(response_ids))[:max_length]
    return Encoded(ids=ids, response_start=min(len(prompt_ids), len(ids)))


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


def pad_batch(
    rows: Sequence[Encoded],
    pad_id: int,
    *,
    left: bool = False,
    width: int | None = None,
    attend_padding: bool = False,
) -> dict[str, torch.Tensor]:
    """Padded ``input_ids``, ``attention_mask`` and response-only ``labels``.

    The default, right padding to the longest row, keeps every real token at its natural
    position id, so no architecture needs position ids fixed up; padding positions are masked
    out of every statistic. ``left=True`` pads on the left, ``width`` pads every row to that
    length, and ``attend_padding=True`` marks the padding as ordinary tokens in the attention
    mask, which is what a forward pass on ``input_ids`` alone sees (pads included everywhere).
    """
    width = max(len(r.ids) for r in rows) if width is None else width
    if any(len(r.ids) > width for r in rows):
        raise RealignError(f"a row is longer than the padding width {width}")
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.full((len(rows), width), int(attend_padding), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.ids)
        first = width - n if left else 0
        input_ids[i, first : first + n] = torch.tensor(row.ids, dtype=torch.long)
        attention_mask[i, first : first + n] = 1
        start = first + row.response_start
        labels[i, start : first + n] = input_ids[i, start : first + n]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_batches(
    rows: Sequence[Encoded], batch_size: int, pad_id: int, **padding: Any
) -> list[dict[str, torch.Tensor]]:
    """Consecutive rows in batches of ``batch_size`` (the last one may be smaller);
    ``padding`` goes to :func:`pad_batch`."""
    return [
        pad_batch(rows[i : i + batch_size], pad_id, **padding)
        for i in range(0, len(rows), batch_size)
    ]


def pad_id_of(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (models without a pad token), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
