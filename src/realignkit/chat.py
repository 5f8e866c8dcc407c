"""The one chat format: how a (prompt, response) pair becomes text and token ids, for every pass.

Training (:mod:`realignkit.train.finetune`), Fisher scores and calibration (:mod:`realignkit.calib`)
and generation (:mod:`realignkit.eval.generate`) all render through this module, so a model is
scored, calibrated and evaluated on exactly the text it was trained on.

- **With a chat template** the prompt is the user turn (after a system turn, or with the system
  prompt folded into the user turn when the template rejects a system role) plus the generation
  prompt; the response is what the template adds for the assistant turn, its end of turn
  included. Templates put their own special tokens (BOS among them) into the text.
- **Without a chat template** (base models) the prompt is :data:`PLAIN_TEMPLATE`, and the
  response follows after one space and ends with the EOS token.
- **One BOS rule**: text carries its special tokens and is tokenised without adding more
  (:func:`token_ids`); a template-less rendering starts with the BOS token exactly when the
  tokenizer would add one by itself, as the model saw its pre-training documents start.

Rows are :class:`Encoded` (ids and where the response starts); :func:`pad_batch` is the one
padding helper (right padding for loss passes, left padding for generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from realignkit.errors import RealignError

IGNORE = -100
"""The label of a position that no loss reads (prompt and padding)."""

PLAIN_TEMPLATE = "{system}User: {prompt}\nAssistant:"
"""How a prompt is shown to a model without a chat template.

It ends at the colon, not at a space: the model writes the space as part of its first word's
token (" Sure"), so a response is rendered as ``" " + response`` and a trained model and a
generating one see the same tokens.

Generation has always shown this text; training used to render ``"User: …\nAssistant: "``
without BOS and Fisher/calibration ``"{prompt}\n"`` with the tokenizer's own specials, so
statistics were taken on text the model was never evaluated on. Generation's form is the one
kept: it is what a deployed template-less model is asked with.
"""

RESPONSE_ENDS = ("template", "eos")


@dataclass
class Encoded:
    """Token ids of one row and where its response starts (``len(ids)`` when none)."""

    ids: list[int]
    response_start: int

    @property
    def response_tokens(self) -> int:
        return len(self.ids) - self.response_start


@dataclass(frozen=True)
class Exchange:
    """A rendered pair: the prompt text (generation prompt included) and the response text
    (the template's end of turn, or the EOS token, included). ``prompt + response`` is the
    whole exchange."""

    prompt: str
    response: str


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of rendered text: its special tokens are in the text, so none are added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts a text with its BOS token by itself."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return (
        tokenizer.bos_token is not None
        and len(with_special) > len(without)
        and with_special[0] == tokenizer.bos_token_id
    )


def _bos_text(tokenizer: Any) -> str:
    return tokenizer.bos_token if adds_bos(tokenizer) else ""


def _template(tokenizer: Any, messages: list[dict], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def chat_messages(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> list[dict]:
    """The user turn, after a system turn when given; folded into the user turn when the
    template rejects a system role (several templates raise for one)."""
    user = [{"role": "user", "content": prompt}]
    if not system_prompt:
        return user
    with_system = [{"role": "system", "content": system_prompt}, *user]
    try:
        _template(tokenizer, with_system, generation_prompt=True)
    except Exception:  # templates raise their own errors for a system turn
        return [{"role": "user", "content": f"{system_prompt}\n\n{prompt}"}]
    return with_system


def render_prompt(
    tokenizer: Any, prompt: str, *, system_prompt: str | None = None, chat: bool = True
) -> str:
    """The full text a model sees before it answers, special tokens included.

    ``chat=False`` renders a raw completion prompt (BOS rule, then the prompt as it is).
    """
    if chat and has_chat_template(tokenizer):
        messages = chat_messages(tokenizer, prompt, system_prompt)
        return _template(tokenizer, messages, generation_prompt=True)
    bos = _bos_text(tokenizer)
    if not chat:
        return bos + prompt
    system = f"{system_prompt}\n\n" if system_prompt else ""
    return bos + PLAIN_TEMPLATE.format(system=system, prompt=prompt)


def render_exchange(
    tokenizer: Any, prompt: str, response: str, *, system_prompt: str | None = None
) -> Exchange:
    """The prompt as :func:`render_prompt` renders it and the response after it.

    With a template, the response is the rest of the template's whole exchange. A template
    whose exchange does not start with its own generation prompt gets the response and EOS
    instead: generation always starts from the generation prompt, so that is what the
    response must follow.
    """
    prompt_text = render_prompt(tokenizer, prompt, system_prompt=system_prompt)
    eos = tokenizer.eos_token or ""
    if not has_chat_template(tokenizer):
        return Exchange(prompt_text, " " + response + eos)
    messages = chat_messages(tokenizer, prompt, system_prompt)
    full = _template(
        tokenizer, [*messages, {"role": "assistant", "content": response}], generation_prompt=False
    )
    if full.startswith(prompt_text):
        return Exchange(prompt_text, full[len(prompt_text) :])
    return Exchange(prompt_text, response + eos)


def encode_chat(
    tokenizer: Any,
    prompt: str,
    response: str | None = None,
    *,
    max_length: int = 512,
    system_prompt: str | None = None,
    response_end: str = "template",
) -> Encoded:
    """One row as token ids (truncated to ``max_length``) with its response start, for Fisher
    and calibration passes.

    Prompt and response are tokenised apart, as generation sees them: the prompt's ids, then
    the tokens the model writes. ``response_end="eos"`` (the official IRR code's calibration
    rows) follows the rendered prompt with the response's own tokens and the EOS token id,
    instead of the template's assistant turn.
    """
    if response_end not in RESPONSE_ENDS:
        raise RealignError(f"unknown response end {response_end!r}; use {RESPONSE_ENDS}")
    if response is not None and response_end == "template":
        exchange = render_exchange(tokenizer, prompt, response, system_prompt=system_prompt)
        prompt_ids = token_ids(tokenizer, exchange.prompt)
        response_ids = token_ids(tokenizer, exchange.response) if exchange.response else []
    else:
        rendered = render_prompt(tokenizer, prompt, system_prompt=system_prompt)
        prompt_ids, response_ids = token_ids(tokenizer, rendered), []
    if response is not None and response_end == "eos":
        if tokenizer.eos_token_id is None:
            raise RealignError("the tokenizer has no EOS token to end the response with")
        lead = "" if has_chat_template(tokenizer) else " "  # the space render_exchange puts
        response_ids = [*token_ids(tokenizer, lead + response), int(tokenizer.eos_token_id)]
    ids = (prompt_ids + response_ids)[:max_length]
    return Encoded(ids=ids, response_start=min(len(prompt_ids), len(ids)))


def encode_exchange(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    max_length: int = 512,
    system_prompt: str | None = None,
) -> Encoded:
    """One training exchange, tokenised whole, with the prompt masked out of the loss.

    The whole exchange is tokenised at once (the text a fine-tune's data collator has always
    seen); the prompt part is the longest common prefix of the tokenised prompt and the
    tokenised exchange, which is exact for templates that tokenise both the same way and safe
    (a token or two more masked) for BPE merges across the boundary. The EOS token is appended
    when the response does not end with it, so the model learns to stop.
    """
    exchange = render_exchange(tokenizer, prompt, response, system_prompt=system_prompt)
    prompt_ids = token_ids(tokenizer, exchange.prompt)
    full_ids = token_ids(tokenizer, exchange.prompt + exchange.response)
    eos = tokenizer.eos_token_id
    if eos is not None and eos not in full_ids[len(prompt_ids) :]:
        full_ids.append(eos)
    shared = 0
    for a, b in zip(prompt_ids, full_ids, strict=False):
        if a != b:
            break
        shared += 1
    ids = full_ids[:max_length]
    return Encoded(ids=ids, response_start=min(shared, len(ids)))


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
    out of every statistic. ``left=True`` pads on the left (generation: every row's next token
    is in the last column), ``width`` pads every row to that length, and
    ``attend_padding=True`` marks the padding as ordinary tokens in the attention mask, which
    is what a forward pass on ``input_ids`` alone sees (pads included everywhere).
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
