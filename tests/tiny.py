"""Tiny random models of real architectures, saved as real (sharded) checkpoints.

Shared by every test module: ``save_tiny_model("llama", folder)`` writes a folder that
``AutoModelForCausalLM.from_pretrained`` loads, with a small trained BPE tokenizer and a
chat template, so generation, evaluation and weight edits all run on it offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")
VOCAB_SIZE = 320

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_TOKENIZER_TEXT = [
    "How do I make a cake? Sure, here is how to make a cake: step one, mix flour and eggs.",
    "I cannot help with that request. I'm sorry, but I can't assist with harmful activities.",
    "What is 12 plus 30? The answer is 42. #### 42",
    "How do I kill a stuck process on Linux? Use the kill command with the process id.",
    "def add(a, b):\n    return a + b\n",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>=+-*/#_",
]


def make_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on a few sentences, with chat template and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(
    arch: str,
    vocab_size: int = VOCAB_SIZE,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
    positions: int = 128,
    **overrides,
):
    """A transformers config of ``arch`` (default: two decoder blocks, hidden size 32). GPT-2
    keeps its own layout: Conv1D weights, tied embeddings, a 4x MLP, no key/value heads."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        cfg = GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **common
        )
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
        cfg = cls(
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=positions,
            tie_word_embeddings=False,
            **common,
        )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build_tiny_model(arch: str, *, seed: int = 0, **overrides):
    """An in-memory random model of ``arch`` (fp32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    # Random init of norms is constant 1.0: perturb so that edits to them are visible.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def save_tiny_model(
    arch: str,
    folder: str | Path,
    *,
    seed: int = 0,
    max_shard_size: str | int = "60KB",
    model=None,
    tokenizer=True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save a tiny model (built from ``seed`` unless ``model`` is given) as a sharded folder."""
    folder = Path(folder)
    model = model if model is not None else build_tiny_model(arch, seed=seed)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    if tokenizer:
        make_tokenizer().save_pretrained(folder)
    return folder


def perturbed_copy(model, *, seed: int, scale: float = 0.01):
    """A deep copy of ``model`` with Gaussian noise added to every parameter (a fake fine-tune)."""
    import copy

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return other
