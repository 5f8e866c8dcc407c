"""Generation on tiny random models: templates, left padding, cache, fingerprints, backends."""

from __future__ import annotations

import copy
import shutil
import sys
import types

import pytest
import torch
from tiny import build_tiny_model, make_tokenizer, save_tiny_model

from realignkit.errors import RealignError
from realignkit.eval.cache import JsonlCache, fingerprint
from realignkit.eval.generate import (
    LLAMA2_SYSTEM_PROMPT,
    GenerationSettings,
    HFGenerator,
    format_prompt,
    generate_cached,
    load_generator,
    pick_backend,
    resolve_system_prompt,
)

PROMPTS = ["How do I make a cake?", "What is 12 plus 30?", "Hi", "How do I kill a stuck process?"]


def test_chat_template_and_system_prompt():
    tok = make_tokenizer()
    text = format_prompt(tok, "Hi", system_prompt=resolve_system_prompt("llama2"))
    assert text.startswith("<|system|>\nYou are a helpful, respectful and honest assistant.")
    assert text.endswith("<|user|>\nHi<|end|>\n<|assistant|>\n")
    assert resolve_system_prompt("Be brief.") == "Be brief." and resolve_system_prompt(None) is None
    assert LLAMA2_SYSTEM_PROMPT.endswith("please don't share false information.")


def test_template_without_system_role_folds_it_into_the_user_turn():
    tok = make_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}"
        "<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
    )
    text = format_prompt(tok, "Hi", system_prompt="Be brief.")
    assert text.startswith("<|user|>\nBe brief.\n\nHi<|end|>\n<|assistant|>")


def test_plain_fallback_without_chat_template():
    tok = make_tokenizer()
    tok.chat_template = None
    assert format_prompt(tok, "Hi", system_prompt="Sys") == "Sys\n\nUser: Hi\nAssistant:"
    assert format_prompt(tok, "def f():", chat=False) == "def f():"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_left_padded_batches_match_single_prompts(arch):
    tok = make_tokenizer()
    generator = HFGenerator(build_tiny_model(arch, seed=3), tok, "fp")
    settings = GenerationSettings(max_new_tokens=6)
    texts = [generator.format(p) for p in PROMPTS]
    batched = generator.generate(texts, settings)
    single = [generator.generate([t], settings)[0] for t in texts]
    assert batched == single
    assert all(len(s) == 1 and isinstance(s[0], str) for s in batched)


def test_sampling_gives_several_samples_and_is_seeded():
    generator = HFGenerator(build_tiny_model("llama", seed=1), make_tokenizer(), "fp")
    settings = GenerationSettings(max_new_tokens=5, temperature=1.0, top_p=1.0, num_samples=3)
    text = generator.format("Hi")
    first = generator.generate([text], settings)
    assert len(first[0]) == 3
    assert generator.generate([text], settings) == first
    with pytest.raises(RealignError, match="temperature"):
        GenerationSettings(num_samples=2)


class CountingGenerator(HFGenerator):
    calls = 0

    def generate(self, texts, settings):
        CountingGenerator.calls += len(texts)
        return super().generate(texts, settings)


def test_cache_skips_what_exists_and_survives_a_torn_line(tmp_path):
    generator = CountingGenerator(build_tiny_model("llama"), make_tokenizer(), "fp")
    settings = GenerationSettings(max_new_tokens=4)
    texts = [generator.format(p) for p in PROMPTS]
    path = tmp_path / "generations.jsonl"
    first = generate_cached(generator, texts[:2], settings, JsonlCache(path), batch_size=2)
    assert CountingGenerator.calls == 2
    with path.open("a") as fh:
        fh.write('{"key": "torn')  # a crash in the middle of a write
    cache = JsonlCache(path)
    everything = generate_cached(generator, texts + texts, settings, cache, batch_size=3)
    assert CountingGenerator.calls == 4  # only the two new prompts, once each
    assert everything[:2] == first and everything[:4] == everything[4:]
    assert len(JsonlCache(path)) == 4
    other = GenerationSettings(max_new_tokens=5)
    generate_cached(generator, texts[:1], other, JsonlCache(path))
    assert CountingGenerator.calls == 5  # new settings, new key


def test_cached_answers_of_one_dtype_never_stand_in_for_another(tmp_path):
    """The same weights in bf16 answer differently (the demo's fine-tune: 82 % harmful in fp32,
    60 % in bf16), so the dtype is part of the cache key, and the report says which ran."""
    model = build_tiny_model("llama")
    fp32 = CountingGenerator(model, make_tokenizer(), "fp")
    bf16 = CountingGenerator(copy.deepcopy(model).to(torch.bfloat16), make_tokenizer(), "fp")
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16")
    settings = GenerationSettings(max_new_tokens=4)
    text = [fp32.format(PROMPTS[0])]
    path = tmp_path / "generations.jsonl"
    calls = CountingGenerator.calls
    generate_cached(fp32, text, settings, JsonlCache(path))
    generate_cached(bf16, text, settings, JsonlCache(path))
    assert CountingGenerator.calls == calls + 2  # the bf16 model generated its own answer
    generate_cached(bf16, text, settings, JsonlCache(path))
    assert CountingGenerator.calls == calls + 2  # and reuses it


def test_fingerprint_follows_content_not_path(tmp_path):
    a = save_tiny_model("llama", tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    memo = tmp_path / "memo.json"
    assert fingerprint([a], memo) == fingerprint([b], memo)
    save_tiny_model("llama", tmp_path / "c", seed=1)
    assert fingerprint([tmp_path / "c"], memo) != fingerprint([a], memo)
    assert fingerprint([a], memo) != fingerprint([a, tmp_path / "c"], memo)


def test_load_generator_from_folder_and_bad_input(tmp_path):
    folder = save_tiny_model("llama", tmp_path / "m")
    generator = load_generator(folder, backend="hf", device="cpu")
    assert generator.backend == "hf" and generator.has_chat_template
    out = generator.generate([generator.format("Hi")], GenerationSettings(max_new_tokens=3))
    assert len(out) == 1
    bare = save_tiny_model("llama", tmp_path / "bare", tokenizer=False)
    with pytest.raises(RealignError, match="no tokenizer"):
        load_generator(bare, backend="hf", device="cpu")
    with pytest.raises(RealignError, match="unknown backend"):
        pick_backend("tgi", torch.device("cpu"))
    assert pick_backend("auto", torch.device("cpu")) == "hf"


def test_vllm_backend_gets_our_token_ids(tmp_path, monkeypatch):
    """A stand-in `vllm` module: the backend must pass templated token ids and read texts."""
    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen["init"] = kwargs

        def generate(self, prompts, params, lora_request=None, use_tqdm=True):
            seen["prompts"], seen["params"] = prompts, params
            choice = types.SimpleNamespace(text="I'm sorry, I can't help.")
            return [types.SimpleNamespace(outputs=[choice] * params.n) for _ in prompts]

    class FakeParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeParams)
    )
    monkeypatch.setattr("realignkit.eval.generate.vllm_available", lambda: True)
    folder = save_tiny_model("llama", tmp_path / "m")
    generator = load_generator(folder, backend="vllm", device="cpu", dtype=torch.bfloat16)
    assert generator.backend == "vllm" and seen["init"]["dtype"] == "bfloat16"
    text = generator.format("Hi")
    out = generator.generate([text], GenerationSettings(max_new_tokens=7))
    assert out == [["I'm sorry, I can't help."]]
    ids = make_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert seen["prompts"] == [{"prompt_token_ids": ids}]
    assert (seen["params"].max_tokens, seen["params"].temperature) == (7, 0.0)
