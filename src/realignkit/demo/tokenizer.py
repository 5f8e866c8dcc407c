"""The miniature world's tokenizer: word-level, trained offline, saved as a Hugging Face tokenizer.

A word-level vocabulary keeps the model small (a few hundred tokens) and the sequences short,
which is what lets the whole story run on a CPU in minutes. Punctuation is split off so that
"cake?" and "cake" share a token, and decoding glues it back ("a cake?"). The chat template
is a plain ``<|user|> ... <|end|> <|assistant|> ... <|end|>`` one, so every other command
(``eval``, ``fisher``, ``finetune``) reads this folder exactly like a real chat model's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = [
    "<|pad|>",
    "<|unk|>",
    "<|bos|>",
    "<|end|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over every word in ``texts``, with chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    # The WordPiece decoder joins words with spaces and removes the space before punctuation.
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordLevelTrainer(
        special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer: Any, folder: str | os.PathLike[str]) -> Path:
    """Write the tokenizer files (tokenizer.json, config, chat template) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder
