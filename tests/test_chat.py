"""The one chat format: training, Fisher/calibration and generation render a pair the same way."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from tiny import make_tokenizer

from realignkit.calib.text import encode_chat
from realignkit.chat import (
    IGNORE,
    Encoded,
    encode_exchange,
    pad_batch,
    render_exchange,
    render_prompt,
    token_ids,
)
from realignkit.eval.generate import format_prompt
from realignkit.train.finetune import PadCollator, encode_pair

CASES = [
    ("How do I make a cake?", "Sure, mix flour and eggs."),
    ("What is 12 plus 30?", "The answer is 42. #### 42"),
    ("  spaced prompt ", "\n\nleading newlines"),
    ("def add(a, b):", " return a + b\n"),
]
SYSTEMS = [None, "Be brief."]


def every_rendering(tok) -> list:
    """What each pass makes of every case: training ids and labels, calibration rows (both
    response ends, and prompt only), generation text (chat and raw)."""
    out = []
    for prompt, response in CASES:
        for system in SYSTEMS:
            out.append(encode_pair(tok, prompt, response, max_length=512, system=system))
            for end in ("template", "eos"):
                row = encode_chat(
                    tok, prompt, response, max_length=512, system_prompt=system, response_end=end
                )
                out.append([row.ids, row.response_start])
            row = encode_chat(tok, prompt, None, max_length=512, system_prompt=system)
            out.append([row.ids, row.response_start])
            out.append(format_prompt(tok, prompt, system_prompt=system))
            out.append(format_prompt(tok, prompt, system_prompt=system, chat=False))
    return out


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


# Taken from the three renderers before they became one (training's `_render`, calibration's
# `encode_chat`, generation's `format_prompt`; the digests are of `every_rendering` run on
# commit 3441915): with a chat template not one id may change.
def test_templated_renderings_are_those_of_the_three_old_paths():
    assert digest(every_rendering(make_tokenizer())) == "f839e4b8d89e8f9f"


def test_smollm2_renderings_are_those_of_the_three_old_paths(smollm2_dir):
    from transformers import AutoTokenizer

    assert digest(every_rendering(AutoTokenizer.from_pretrained(smollm2_dir))) == (
        "a1ca29be50759ee2"
    )


def plain_tokenizer(*, bos: bool = False):
    """The tiny tokenizer without a chat template; ``bos=True`` makes it add BOS by itself
    (as Llama's and Mistral's tokenizers do)."""
    from tokenizers.processors import TemplateProcessing

    tok = make_tokenizer()
    tok.chat_template = None
    if bos:
        tok._tokenizer.post_processor = TemplateProcessing(
            single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)]
        )
    return tok


@pytest.mark.parametrize("bos", [False, True])
def test_without_a_template_every_pass_sees_the_generation_prompt(bos):
    # Fisher scores, calibration Hessians and the fine-tune all see the exact prompt tokens
    # the model is evaluated on, then the response the model would write after them.
    tok = plain_tokenizer(bos=bos)
    for prompt, response in CASES[:2]:
        for system in SYSTEMS:
            shown = token_ids(tok, format_prompt(tok, prompt, system_prompt=system))
            calib = encode_chat(tok, prompt, response, system_prompt=system)
            trained = encode_exchange(tok, prompt, response, system_prompt=system)
            assert calib.ids[: calib.response_start] == shown
            assert trained.ids[: trained.response_start] == shown
            assert trained.ids == calib.ids  # BPE does not merge across ":" + " Sure"
            assert encode_chat(tok, prompt, None, system_prompt=system).ids == shown


def test_without_a_template_the_text_is_user_assistant_with_one_bos_and_eos():
    tok = plain_tokenizer(bos=True)
    exchange = render_exchange(tok, "Hi", "Hello.", system_prompt="Sys")
    assert exchange.prompt == "<|bos|>Sys\n\nUser: Hi\nAssistant:"
    assert exchange.response == " Hello.<|end|>"  # the space is the response's first token's
    ids = encode_exchange(tok, "Hi", "Hello.").ids
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
    assert render_prompt(tok, "def f():", chat=False) == "<|bos|>def f():"
    # without a BOS of its own, none is invented
    assert render_prompt(plain_tokenizer(), "Hi") == "User: Hi\nAssistant:"


def test_calibration_eos_end_follows_the_prompt_with_the_response_tokens():
    tok = plain_tokenizer()
    row = encode_chat(tok, "Hi", "Hello.", response_end="eos")
    assert row.ids[row.response_start :] == [*token_ids(tok, " Hello."), tok.eos_token_id]
    assert row.ids == encode_chat(tok, "Hi", "Hello.").ids


def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_user_turn():
    tok = make_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}"
        "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    shown = format_prompt(tok, "Hi", system_prompt="Sys")
    assert shown == "<|user|>\nSys\n\nHi<|end|>\n<|assistant|>\n"
    trained = encode_exchange(tok, "Hi", "Hello.", system_prompt="Sys")  # used to raise
    assert trained.ids[: trained.response_start] == token_ids(tok, shown)


def test_training_labels_are_the_response_tokens_only():
    tok = make_tokenizer()
    ids, labels = encode_pair(tok, "How?", "Sure.", max_length=512)
    row = encode_exchange(tok, "How?", "Sure.")
    assert ids == row.ids
    assert labels == [IGNORE] * row.response_start + ids[row.response_start :]


def test_right_padding_masks_padding_and_prompt_out_of_the_labels():
    batch = pad_batch([Encoded([5, 6, 7], 1), Encoded([8], 0)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_left_padding_puts_every_next_token_in_the_last_column():
    batch = pad_batch([Encoded([5, 6, 7], 3), Encoded([8], 1)], pad_id=9, left=True)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_the_training_collator_is_the_padding_helper():
    tok = make_tokenizer()
    rows = [encode_exchange(tok, p, r) for p, r in CASES]
    items = [{"input_ids": r.ids, "response_start": r.response_start} for r in rows]
    collated = PadCollator(tok.pad_token_id)(items)
    expected = pad_batch(rows, tok.pad_token_id)
    assert collated.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(collated[key], tensor)
