"""Turning prompt (+ response) rows into token batches for Fisher and calibration passes.

A row becomes one chat turn: the user prompt through the tokenizer's chat template with the
generation prompt, then the assistant response and the template's end of turn. The response
start is remembered so a loss can be restricted to response tokens. Without a chat template,
the prompt is followed by a newline and the response by the EOS token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100


@dataclass
class Encoded:
    """Token ids of one row and where its response starts (``len(ids)`` when none)."""

    ids: list[int]
    response_start: int

    @property
    def response_tokens(self) -> int:
        return len(self.ids) - self.response_start


def _chat_texts(tokenizer: Any, prompt: str, response: str | None) -> tuple[str, str] | None:
    """Prompt text (with generation prompt) and response text from the chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    user = [{"role": "user", "content": prompt}]
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
    tokenizer: Any, prompt: str, response: str | None = None, *, max_length: int = 512
) -> Encoded:
    """One row as token ids (truncated to ``max_length``) with its response start."""
    texts = _chat_texts(tokenizer, prompt, response)
    if texts is None:
        prompt_ids = tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"]
        response_text = "" if response is None else response + (tokenizer.eos_token or "")
    else:
        prompt_ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
        response_text = texts[1]
    response_ids = (
        tokenizer(response_text, add_special_tokens=False)["input_ids"] if response_text else []
    )
    ids = (list(prompt_ids) + list(response_ids))[:max_length]
    return Encoded(ids=ids, response_start=min(len(prompt_ids), len(ids)))


def pad_batch(rows: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and response-only ``labels``.

    Right padding keeps every real token at its natural position id, so no architecture needs
    position ids fixed up; padding positions are masked out of every statistic.
    """
    width = max(len(r.ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.ids)
        input_ids[i, :n] = torch.tensor(row.ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, row.response_start : n] = input_ids[i, row.response_start : n]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_batches(
    rows: Sequence[Encoded], batch_size: int, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """Consecutive rows in batches of ``batch_size`` (the last one may be smaller)."""
    return [pad_batch(rows[i : i + batch_size], pad_id) for i in range(0, len(rows), batch_size)]


def pad_id_of(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (models without a pad token), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
