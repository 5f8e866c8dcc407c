"""Generation on a real pretrained model: SmolLM2-135M-Instruct with its real chat template."""

from __future__ import annotations

from realignkit.eval.cache import JsonlCache
from realignkit.eval.generate import GenerationSettings, generate_cached, load_generator


def test_smollm2_generates_with_its_chat_template(smollm2_dir, tmp_path):
    generator = load_generator(smollm2_dir, backend="hf", device="cpu")
    prompts = ["What is the capital of France?", "Write one word that rhymes with cat."]
    texts = [generator.format(p, system_prompt="Answer briefly.") for p in prompts]
    assert all(t.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>") for t in texts)
    assert all(t.endswith("<|im_start|>assistant\n") for t in texts)
    settings = GenerationSettings(max_new_tokens=8)
    cache = JsonlCache(tmp_path / "generations.jsonl")
    batched = generate_cached(generator, texts, settings, cache, batch_size=2)
    assert all(len(s) == 1 and s[0].strip() for s in batched)
    assert "<|im_end|>" not in batched[0][0]  # special tokens are not decoded into answers
    # Left padding does not change greedy answers: the shorter prompt alone gives the same.
    alone = generator.generate([texts[0]], settings)
    assert alone[0] == batched[0]
    generator.close()
