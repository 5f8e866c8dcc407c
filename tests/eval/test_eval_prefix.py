"""The shared-prefix fast path: a batch's common prompt start run once, outputs unchanged.

Generation and the GSM8K loss pass run a batch's common prefix once and share its cache; the
spec is that nothing a user sees changes: greedy tokens are the plain path's token for token,
losses agree to 1e-5, and where an architecture cannot share (a sliding window shorter than
the sequence) or there is nothing to share, the plain path is what runs.
"""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHITECTURES, build_tiny_model, make_tokenizer

import realignkit.eval.generate as generate_module
from realignkit.chat import encode_chat
from realignkit.demo.real.measure import response_losses
from realignkit.eval.generate import GenerationSettings, HFGenerator
from realignkit.eval.prefix import common_prefix_length, shared_prefix_length

PROMPTS = [
    "How do I make a cake?",
    "What is 12 plus 30?",
    "Hi",
    "How do I kill a stuck process on Linux? Use the kill command with the process id.",
]
SYSTEM = "You are a helpful assistant. Be brief."


@pytest.fixture
def taken(monkeypatch):
    """The prefix length each generate_ids call actually shared (0: the plain path ran)."""
    seen: list[int] = []
    original = generate_module.run_shared_prefix

    def spy(*args, **kwargs):
        shared, cache = original(*args, **kwargs)
        seen.append(shared)
        return shared, cache

    monkeypatch.setattr(generate_module, "run_shared_prefix", spy)
    return seen


def _generators(model):
    tok = make_tokenizer()
    return HFGenerator(model, tok, "fp"), HFGenerator(model, tok, "fp", share_prefix=False)


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4, 5], [1, 2]]) == 2
    assert common_prefix_length([[1, 2], [3, 2]]) == 0
    assert common_prefix_length([[7, 8, 9]]) == 3
    assert common_prefix_length([]) == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_tokens_equal_the_plain_path(arch, taken):
    fast, plain = _generators(build_tiny_model(arch, seed=3))
    batch = fast.encode([fast.format(p, system_prompt=SYSTEM) for p in PROMPTS])
    assert len({len(ids) for ids in batch}) == len(batch)  # rows of different lengths
    settings = GenerationSettings(max_new_tokens=12)
    expected = plain.generate_ids(batch, settings)
    assert fast.generate_ids(batch, settings) == expected
    # the system block and the user header: everything before the first prompt word
    assert taken == [common_prefix_length(batch)] and taken[0] >= 10
    assert len({tuple(s[0]) for s in expected}) > 1  # the prompts are told apart


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sampled_tokens_equal_the_plain_path(arch, taken):
    """Several samples of one prompt: the whole prompt but its last token is shared."""
    fast, plain = _generators(build_tiny_model(arch, seed=3))
    batch = fast.encode([fast.format(PROMPTS[0], system_prompt=SYSTEM)])
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, num_samples=3, seed=5)
    assert fast.generate_ids(batch, settings) == plain.generate_ids(batch, settings)
    assert taken == [len(batch[0]) - 1]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_nothing_shared_runs_the_plain_path(arch, taken):
    fast, plain = _generators(build_tiny_model(arch, seed=3))
    settings = GenerationSettings(max_new_tokens=8)
    no_common = fast.encode(["Hi there", "What is 12 plus 30?"])  # raw text, no template
    assert common_prefix_length(no_common) == 0
    one = fast.encode([fast.format(PROMPTS[0], system_prompt=SYSTEM)])
    for batch in (no_common, one):
        assert fast.generate_ids(batch, settings) == plain.generate_ids(batch, settings)
    assert taken == [0, 0]


def test_a_sliding_window_shorter_than_the_sequence_runs_the_plain_path(taken):
    model = build_tiny_model("mistral", seed=3, sliding_window=16)
    fast, plain = _generators(model)
    batch = fast.encode([fast.format(p, system_prompt=SYSTEM) for p in PROMPTS])
    settings = GenerationSettings(max_new_tokens=6)
    assert fast.generate_ids(batch, settings) == plain.generate_ids(batch, settings)
    assert taken == [0]
    wide = build_tiny_model("mistral", seed=3, sliding_window=128)
    assert shared_prefix_length(wide, batch, total_length=100) == common_prefix_length(batch)


def _answer_rows():
    """The prompts with a short answer each, encoded with the system prompt (loss rows)."""
    tok = make_tokenizer()
    answers = ["The answer is 42. #### 42", "Mix flour and eggs.", "Sure.", "Use kill."]
    return [
        encode_chat(tok, p, a, max_length=96, system_prompt=SYSTEM)
        for p, a in zip(PROMPTS, answers, strict=True)
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_response_losses_equal_the_plain_pass(arch, monkeypatch):
    import realignkit.eval.prefix as prefix_module

    model = build_tiny_model(arch, seed=3)
    rows = _answer_rows()
    plain = response_losses(model, rows, 0, batch_size=3, share_prefix=False)
    shared: list[int] = []
    original = prefix_module.shared_prefix_length
    monkeypatch.setattr(
        prefix_module,
        "shared_prefix_length",
        lambda *a, **k: shared.append(original(*a, **k)) or shared[-1],
    )
    fast = response_losses(model, rows, 0, batch_size=3)
    assert shared[0] >= 10 and len(shared) == 2  # a batch of 3, then one of 1 (plain)
    assert [c for _, c in fast] == [c for _, c in plain] and all(c > 0 for _, c in plain)
    torch.testing.assert_close(
        torch.tensor([s for s, _ in fast]), torch.tensor([s for s, _ in plain]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_response_losses_are_the_summed_nll_of_each_response(arch):
    """Each row alone through the model, full logits, summed over its response tokens."""
    model = build_tiny_model(arch, seed=3)
    rows = _answer_rows()
    losses = response_losses(model, rows, 0, batch_size=4, share_prefix=False)
    for row, (total, count) in zip(rows, losses, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row.ids])).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits, torch.tensor(row.ids[1:]), reduction="none"
        )[row.response_start - 1 :]
        assert count == len(row.ids) - row.response_start
        assert total == pytest.approx(float(nll.sum()), abs=1e-4)


def test_response_losses_batch_rows_of_similar_length():
    """Longest first, so each batch is as wide as its own longest row and no wider."""
    model = build_tiny_model("llama", seed=3)
    rows = _answer_rows()
    widths: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    response_losses(model, rows, 0, batch_size=2, share_prefix=False)
    hook.remove()
    lengths = sorted((len(r.ids) for r in rows), reverse=True)
    assert widths == [lengths[0], lengths[2]]
