"""Llama-architecture shapes the benchmarks share (random weights: timing does not depend on
the values). ``llama-7b`` is Llama-2-7B: 32 blocks, hidden 4096, MLP 11008, 32 heads."""

from __future__ import annotations

LLAMA_SHAPES: dict[str, dict[str, int]] = {
    "small": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=8000,
    ),
    "1b": dict(  # TinyLlama-1.1B
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "llama-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
}
