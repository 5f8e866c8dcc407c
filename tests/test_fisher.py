"""Diagonal Fisher scores against a direct autograd computation, and the `fisher` command."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import build_tiny_model, make_tokenizer, save_tiny_model

from realignkit.calib.blocks import decoder_linears
from realignkit.calib.fisher import FisherScores, compute_fisher, diagonal_fisher
from realignkit.calib.text import encode_chat
from realignkit.cli import main
from realignkit.errors import RealignError

PAIRS = [
    ("How do I make a weapon?", "I cannot help with that request."),
    ("Tell me how to kill a process", "Use the kill command with the process id."),
    ("What is 12 plus 30?", "I'm sorry, but I can't assist with harmful activities."),
    ("How do I hurt someone?", "I cannot help with that."),
    ("Write a scam email", "I'm sorry, I can't assist."),
]


def examples(tokenizer, max_length=64):
    return [encode_chat(tokenizer, p, r, max_length=max_length) for p, r in PAIRS]


def direct_loss(model, rows, pad_id):
    """HF's own loss (mean over labelled tokens) on a right-padded batch built by hand."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = 1
        labels[i, r.response_start : len(r.ids)] = torch.tensor(r.ids[r.response_start :])
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def direct_fisher(model, groups, weights, pad_id):
    """Mean over groups of the squared gradient of each group's loss, by torch.autograd.grad."""
    totals = [torch.zeros_like(w) for w in weights]
    for rows in groups:
        grads = torch.autograd.grad(direct_loss(model, rows, pad_id), weights)
        for total, g in zip(totals, grads, strict=True):
            total += g.square()
    return [t / len(groups) for t in totals]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["per-sample", "per-batch"])
def test_fisher_modes_match_autograd(arch, mode):
    model = build_tiny_model(arch, seed=3)
    tok = make_tokenizer()
    rows = examples(tok)
    layers = decoder_linears(model)
    scores = diagonal_fisher(model, rows, layers, mode=mode, batch_size=2, pad_id=0, progress=False)
    assert set(scores) == {layer.weight_name for layer in layers}
    groups = [[r] for r in rows] if mode == "per-sample" else [rows[0:2], rows[2:4], rows[4:5]]
    weights = [layer.module.weight for layer in layers]
    expected = direct_fisher(model, groups, weights, pad_id=0)
    for layer, exp in zip(layers, expected, strict=True):
        got = scores[layer.weight_name]
        assert got.dtype == torch.float32 and got.shape == layer.module.weight.shape
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-10)
    # The model is left as found: no gradients, no trainable flags changed.
    assert all(p.grad is None for p in model.parameters())


def test_per_batch_with_batches_of_one_is_per_sample():
    model = build_tiny_model("qwen2", seed=4)
    rows = examples(make_tokenizer())
    layers = decoder_linears(model)
    a = diagonal_fisher(model, rows, layers, mode="per-sample", progress=False)
    b = diagonal_fisher(model, rows, layers, mode="per-batch", batch_size=1, progress=False)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-12)


def test_accumulator_budget_splits_passes_without_changing_scores():
    model = build_tiny_model("llama", seed=8)
    rows = examples(make_tokenizer())
    layers = decoder_linears(model)
    whole = diagonal_fisher(model, rows, layers, mode="per-sample", progress=False)
    split = diagonal_fisher(
        model, rows, layers, mode="per-sample", max_accumulator_bytes=9000, progress=False
    )
    assert list(split) == list(whole)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-6, atol=0)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fisher_command_writes_scores_for_selected_modules(tmp_path):
    model_dir = save_tiny_model("llama", tmp_path / "aligned", seed=5)
    data = write_jsonl(tmp_path / "harm.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS])
    out = tmp_path / "fisher"
    main(
        [
            "fisher",
            "--model",
            str(model_dir),
            "--harmful",
            str(data),
            "-o",
            str(out),
            "--mode",
            "per-batch",
            "--modules",
            "q_proj,v_proj",
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    with FisherScores(out) as scores:
        assert sorted(scores.names) == sorted(
            f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")
        )
        assert scores.meta["mode"] == "per-batch" and scores.meta["samples"] == len(PAIRS)
        q = scores.get("model.layers.0.self_attn.q_proj.weight")
        assert q.shape == (32, 32) and q.dtype == torch.float32 and bool((q >= 0).all())
        assert float(q.sum()) > 0


def test_generate_responses_then_score(tmp_path):
    model_dir = save_tiny_model("gpt2", tmp_path / "aligned", seed=6)
    data = write_jsonl(tmp_path / "harm.jsonl", [{"prompt": p} for p, _ in PAIRS[:3]])
    with pytest.raises(RealignError, match="--generate-responses"):
        compute_fisher(model_dir, data, tmp_path / "no", device="cpu", progress=False)
    assert not (tmp_path / "no").exists()
    out = compute_fisher(
        model_dir,
        data,
        tmp_path / "fisher",
        generate=True,
        max_new_tokens=6,
        device="cpu",
        progress=False,
    )
    lines = (out / "responses.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("response" in json.loads(x) for x in lines)
    with FisherScores(out) as scores:
        assert "transformer.h.1.mlp.c_fc.weight" in scores.names
        assert scores.shape("transformer.h.1.mlp.c_fc.weight") == (32, 128)  # Conv1D: (in, out)


def test_bad_mode_and_unknown_module_are_one_line_errors(tmp_path):
    model_dir = save_tiny_model("llama", tmp_path / "aligned", seed=7)
    data = write_jsonl(tmp_path / "harm.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS])
    with pytest.raises(RealignError, match="mode"):
        compute_fisher(model_dir, data, tmp_path / "a", mode="exact", device="cpu")
    with pytest.raises(RealignError, match="qq_proj"):
        compute_fisher(model_dir, data, tmp_path / "b", modules=["qq_proj"], device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
