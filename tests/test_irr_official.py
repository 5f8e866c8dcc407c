"""IRR as the official code runs it (``--official`` and its separate options).

The reference below is written from the method's description (issue 17), not from any code:
float64, explicit inverses of the trailing Hessian for every column, Python sorting. It is
checked end to end on tiny Llama, Qwen2, Mistral and GPT-2 models, then every official rule
(ties, rounding, zeros, dead columns) has its own test, and the default outputs are pinned to
the implementation before these options existed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from irr_pinned import PINNED_BY_CPU, TORCH_VERSION, pinned_runs  # noqa: E402
from pins import (  # noqa: E402
    REFINED_RTOL,
    cpu_kind,
    far_from_pins,
    fingerprint,
    load_fingerprints,
    one_thread,
    tensors_digest,
)
from test_irr import kernel, layer_inputs, make_world, run_irr, tensors, write_jsonl  # noqa: E402
from tiny import ARCHITECTURES, build_tiny_model, make_tokenizer, save_tiny_model  # noqa: E402

from realignkit.calib.blocks import block_linears, find_decoder_blocks  # noqa: E402
from realignkit.cli import main  # noqa: E402
from realignkit.errors import RealignError  # noqa: E402
from realignkit.methods.irr import (  # noqa: E402
    IRRSettings,
    calibration_batches,
    calibration_examples,
    candidates_of,
    identify,
    recalibrate_adaptive,
)
from realignkit.ops.masks import removal_count, sign_conflict, top_fraction_mask  # noqa: E402
from realignkit.ops.obs import obs_recalibrate, obs_recalibrate_adaptive  # noqa: E402

F64 = torch.float64
BLOCK = 8  # 32- and 64-wide tiny layers: 4 to 8 blocks per weight
LENGTH = 48  # left-padding width (the tiny models have 128 positions)
DEAD = 5  # input feature switched off in block 0 (its norm weight is 0 in the fine-tune)


# --- the reference, from the description ---------------------------------------------------------


def reference_irr(delta, safety, fisher, hessian, rho, *, block=BLOCK, damping=0.01, rules=None):
    """IRR's sweep as described, in float64. ``rules`` default to the official ones.

    Columns are walked left to right in blocks. At the start of a block, its entries' current
    values (after the updates from all columns to the left) are compared in sign with v; the
    candidates (row-major order inside the block) are sorted by Fisher score ascending, stably;
    the first ⌊n·(1 − R)⌋ are kept and the rest removed. Then, column by column, each removed
    entry is zeroed and its row compensated with the closed-form OBS update restricted to the
    columns not yet passed: w[c:] -= w_c / [H_c⁻¹]₀₀ · [H_c⁻¹]₀,: with H_c = H[c:, c:].
    """
    rules = {
        "ties": "later",
        "rounding": "keep-floor",
        "zero": True,
        "dead": "zero",
        "adaptive": True,
        **(rules or {}),
    }
    weight = delta.to(F64).clone()
    hess = hessian.to(F64).clone()
    dead = hess.diagonal() == 0
    if rules["dead"] == "zero":
        weight[:, dead] = 0.0
    hess[dead, :] = 0.0
    hess[:, dead] = 0.0
    hess[dead, dead] = 1.0
    hess += damping * hess.diagonal().mean() * torch.eye(len(hess), dtype=F64)
    rows, cols = weight.shape
    removed = torch.zeros(rows, cols, dtype=torch.bool)
    original = weight.clone()
    for start in range(0, cols, block):
        end = min(start + block, cols)
        seen = weight if rules["adaptive"] else original
        cells = [(r, c) for r in range(rows) for c in range(start, end)]

        def conflicts(cell, seen=seen):
            d, v = float(seen[cell]), float(safety[cell])
            if rules["zero"]:
                return (d > 0) - (d < 0) != (v > 0) - (v < 0)
            return d * v < 0

        candidates = [cell for cell in cells if conflicts(cell)]
        n = len(candidates)
        if rules["rounding"] == "keep-floor":
            cut = math.floor(n * round(1 - rho, 12))  # keep the first `cut` in ascending order
        else:
            cut = n - math.floor(rho * n + 0.5)
        if rules["ties"] == "later":
            ascending = sorted(candidates, key=lambda cell: float(fisher[cell]))
        else:  # earlier entry removed first: among ties, the later one sorts lower
            order = {cell: i for i, cell in enumerate(candidates)}
            ascending = sorted(candidates, key=lambda cell: (float(fisher[cell]), -order[cell]))
        for cell in ascending[cut:]:
            removed[cell] = True
        for c in range(start, end):
            rows_here = removed[:, c].nonzero().flatten().tolist()
            if not rows_here:
                continue
            inverse = torch.linalg.inv(hess[c:, c:])
            for r in rows_here:
                weight[r, c:] -= weight[r, c] / inverse[0, 0] * inverse[0, :]
                weight[r, c] = 0.0
    return weight, removed


# --- a world where the official rules matter -----------------------------------------------------

INSTRUCTIONS = [
    {
        "instruction": f"Add {i} and {2 * i}.",
        "input": "" if i % 3 else f"Show the steps for {i}.",
        "output": f"{i} plus {2 * i} is {3 * i}. #### {3 * i}",
    }
    for i in range(12)
]


def official_world(root: Path, arch: str) -> dict:
    """``make_world`` plus exact zeros in δ (30 %) and v (20 %), an input feature that is dead
    in block 0, Fisher scores quantised to five levels (many ties), and token-id rows."""
    from safetensors.torch import load_file, save_file

    world = make_world(root / "w", arch)
    base, ft, unal = (build_tiny_model(arch) for _ in range(3))
    for model, key in ((base, "base"), (ft, "ft"), (unal, "unal")):
        state = tensors(world[key])
        model.load_state_dict(state, strict=False)
    gen = torch.Generator().manual_seed(5)
    base_params = dict(base.named_parameters())
    with torch.no_grad():
        for name, p in ft.named_parameters():
            keep_base = torch.rand(p.shape, generator=gen) < 0.3
            p.copy_(torch.where(keep_base, base_params[name], p))
        for name, p in unal.named_parameters():
            p.copy_(torch.where(torch.rand(p.shape, generator=gen) < 0.2, base_params[name], p))
        norm = ft.transformer.h[0].ln_1 if arch == "gpt2" else ft.model.layers[0].input_layernorm
        norm.weight[DEAD] = 0.0
        if getattr(norm, "bias", None) is not None:
            norm.bias[DEAD] = 0.0
    from realignkit.methods.safety_vector import compute_safety_vector

    world["ft"] = save_tiny_model(arch, root / "ft0", model=ft)
    world["unal"] = save_tiny_model(arch, root / "unal0", model=unal)
    world["sv"] = compute_safety_vector(world["base"], root / "sv0", unaligned=world["unal"])
    for shard in Path(world["fisher"]).glob("*.safetensors"):
        scores = load_file(shard)
        save_file(
            {n: torch.round(4 * t / t.max()) for n, t in scores.items()},
            shard,
            metadata={"format": "pt"},
        )
    # Token ids of varied lengths: the official chat format (Llama-2's long system prompt)
    # does not fit the tiny models' 128 positions; it is tested on its own below.
    lengths = torch.randint(12, LENGTH, (10,), generator=gen).tolist()
    ids = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in lengths]
    world["calib"] = write_jsonl(root / "ids.jsonl", [{"input_ids": row} for row in ids])
    world["arch"] = arch
    return world


OFFICIAL_RUN = dict(max_length=LENGTH, num_samples=8)


def run_official(world, out, **overrides):
    settings = IRRSettings.official(block_size=BLOCK, device="cpu", **OFFICIAL_RUN)
    for key, value in overrides.items():
        setattr(settings, key, value)
    from realignkit.calib.fisher import FisherScores
    from realignkit.checkpoint import FinetunedWeights
    from realignkit.methods.irr import irr
    from realignkit.methods.safety_vector import SafetyVector

    with (
        FinetunedWeights(world["ft"], base=world["base"]) as weights,
        SafetyVector(world["sv"]) as sv,
        FisherScores(world["fisher"]) as fisher,
    ):
        return irr(
            weights,
            sv,
            out,
            fisher=fisher,
            calibration=world["calib"],
            settings=settings,
            progress=False,
        )


def float32_tolerance(hessian, want, damping: float) -> float:
    """How far a float32 OBS sweep may lie from the float64 one: 2e-5, or the forward-error
    bound eps32 · κ(H + λI) · max|w| where the damped Hessian is ill-conditioned. Attention
    outputs (o_proj) of the tiny models span few directions, so their κ sits near the damping's
    limit (~3e3, against ~40-300 for the other layers); there an AVX2 CPU's float32 summation
    order gave 2.2e-5 at |w| ≤ 0.21, a quarter of this bound, where AVX-512 gave less than 2e-5."""
    hess = hessian.clone()
    dead = hess.diagonal() == 0
    hess[dead, :], hess[:, dead] = 0.0, 0.0
    hess[dead, dead] = 1.0
    hess += damping * hess.diagonal().mean() * torch.eye(len(hess), dtype=hess.dtype)
    bound = (
        torch.finfo(torch.float32).eps * float(torch.linalg.cond(hess)) * float(want.abs().max())
    )
    return max(2e-5, bound)


def check_against_reference(world, result, settings: IRRSettings, rules: dict) -> int:
    """Walk the blocks as IRR did (earlier blocks already edited); compare every edited layer
    with the reference on Hessians recomputed here. Returns the number of entries removed."""
    from transformers import AutoModelForCausalLM

    arch = world["arch"]
    base, out = tensors(world["base"]), tensors(result.path)
    sv, fisher = tensors(world["sv"]), tensors(world["fisher"])
    tok = make_tokenizer()
    batches = calibration_batches(
        calibration_examples(world["calib"], tok, settings), tok, settings
    )
    model = AutoModelForCausalLM.from_pretrained(world["ft"], dtype=torch.float32).eval()
    prefix, blocks = find_decoder_blocks(model)
    params = dict(model.named_parameters())
    removed_total = 0
    for index in range(len(blocks)):
        layers = block_linears(blocks[index], f"{prefix}.{index}", index)
        for layer in layers:
            name = layer.weight_name
            x = layer_inputs(model, layer.module, batches).double()
            assert x.shape[0] == sum(b["input_ids"].numel() for b in batches)  # pads included
            hess = 2.0 / len(x) * x.T @ x
            delta = kernel(params[name].detach() - base[name], arch).double()
            want, removed = reference_irr(
                delta,
                kernel(sv[name], arch),
                kernel(fisher[name], arch),
                hess,
                settings.rho,
                rules=rules,
            )
            got = kernel(out[name], arch).double() - kernel(base[name], arch).double()
            assert torch.equal(got[removed], torch.zeros_like(got[removed])), name
            torch.testing.assert_close(
                got, want, rtol=0, atol=float32_tolerance(hess, want, settings.damping), msg=name
            )
            removed_total += int(removed.sum())
        with torch.no_grad():
            for layer in layers:
                params[layer.weight_name].copy_(out[layer.weight_name])
    return removed_total


@pytest.fixture(scope="module", params=ARCHITECTURES)
def world(request, tmp_path_factory):
    return official_world(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("rho", [0.3, 1.0])  # 0.5: both roundings agree
def test_official_mode_equals_the_reference_on_every_architecture(world, rho, tmp_path):
    result = run_official(world, tmp_path / "out", rho=rho)
    settings = IRRSettings.official(rho=rho, block_size=BLOCK, **OFFICIAL_RUN)
    removed = check_against_reference(world, result, settings, rules={})
    assert removed == result.removed > 0
    # The dead input of block 0 is back at the base weight in every layer that reads it.
    first = [s.name for s in result.layers][: 3 if world["arch"] != "gpt2" else 1]
    out, base = tensors(result.path), tensors(world["base"])
    for name in first:
        assert torch.equal(
            kernel(out[name], world["arch"])[:, DEAD], kernel(base[name], world["arch"])[:, DEAD]
        )


@pytest.mark.parametrize(
    "overrides, rules",
    [
        ({"mask_selection": "fixed"}, {"adaptive": False}),
        (
            {"ties": "earlier", "count_rounding": "half-up", "zero_is_conflict": False},
            {"ties": "earlier", "rounding": "half-up", "zero": False},
        ),
        ({"dead_columns": "keep"}, {"dead": "keep"}),
    ],
    ids=["fixed-mask", "realignkit-rules-adaptive", "dead-kept"],
)
def test_each_official_behaviour_alone_follows_the_reference(overrides, rules, tmp_path_factory):
    world = official_world(tmp_path_factory.mktemp("llama-alone"), "llama")
    result = run_official(world, tmp_path_factory.mktemp("out") / "o", rho=0.5, **overrides)
    settings = IRRSettings.official(rho=0.5, block_size=BLOCK, **OFFICIAL_RUN, **overrides)
    assert check_against_reference(world, result, settings, rules) == result.removed


# --- each rule on its own ------------------------------------------------------------------------


def test_ties_official_removes_the_later_entry_realignkit_the_earlier():
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0, 1.0, 0.5]])
    candidates = torch.ones_like(scores, dtype=torch.bool)
    later = top_fraction_mask(scores, candidates, 0.5, budget="matrix", ties="later")
    earlier = top_fraction_mask(scores, candidates, 0.5, budget="matrix")
    assert later.tolist() == [[True, False, False, True, True, False]]
    assert earlier.tolist() == [[True, True, True, False, False, False]]
    # Inside a 2-column block of a 2-row matrix, "later" is row-major order.
    grid = torch.ones(2, 4)
    mask = top_fraction_mask(grid, grid.bool(), 0.25, budget="block", block_size=2, ties="later")
    assert mask.tolist() == [[False, False, False, False], [False, True, False, True]]


@pytest.mark.parametrize(
    "rho, n, half_up, keep_floor",
    [
        (0.21, 10, 2, 3),  # the official count rounds the removals up
        (0.5, 5, 3, 3),
        (0.71, 100, 71, 72),  # --sparsity 0.29: int(100 * 0.29) = 28 kept, as in Python
        (1.0, 7, 7, 7),
        (0.0, 7, 0, 0),
    ],
)
def test_counts_official_keeps_the_floor_realignkit_rounds_half_up(rho, n, half_up, keep_floor):
    assert removal_count(rho, n) == half_up
    assert removal_count(rho, n, rounding="keep-floor") == keep_floor
    scores = torch.arange(float(n)).reshape(1, n)
    mask = top_fraction_mask(scores, scores >= 0, rho, budget="block", rounding="keep-floor")
    assert int(mask.sum()) == keep_floor
    assert int(top_fraction_mask(scores, scores >= 0, rho, budget="block").sum()) == half_up


def test_zeros_are_sign_conflicts_only_in_official_mode():
    delta = torch.tensor([1.0, -2.0, 0.0, 3.0, -1.0, 0.0])
    safety = torch.tensor([-1.0, -1.0, 5.0, 0.0, 2.0, 0.0])
    assert sign_conflict(delta, safety).tolist() == [True, False, False, False, True, False]
    official = sign_conflict(delta, safety, zero_is_conflict=True).tolist()
    assert official == [True, False, True, True, True, False]
    # A low-rank safety vector that does not touch a weight is v = 0 there.
    on = IRRSettings(zero_is_conflict=True)
    assert candidates_of(delta, None, on).tolist() == [True, True, False, True, True, False]
    assert not candidates_of(delta, None, IRRSettings()).any()


def test_dead_input_columns_go_back_to_the_base_only_when_asked():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, generator=gen, dtype=F64)
    inputs = torch.randn(10, 200, generator=gen, dtype=F64)
    inputs[3] = 0.0
    hessian = 2.0 / 200 * inputs @ inputs.T
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[0, 1] = mask[2, 7] = True
    kept = obs_recalibrate(weight, hessian, mask, compute_dtype=F64)
    zeroed = obs_recalibrate(weight, hessian, mask, compute_dtype=F64, zero_dead_columns=True)
    assert torch.equal(kept[:, 3], weight[:, 3])
    assert torch.equal(zeroed[:, 3], torch.zeros(6, dtype=F64))
    alive = [c for c in range(10) if c != 3]
    torch.testing.assert_close(zeroed[:, alive], kept[:, alive], rtol=0, atol=1e-12)
    # Nothing to remove: the dead columns are still zeroed.
    nothing = obs_recalibrate(
        weight, hessian, mask & False, compute_dtype=F64, zero_dead_columns=True
    )
    assert torch.equal(nothing[:, 3], torch.zeros(6, dtype=F64))
    assert torch.equal(nothing[:, alive], weight[:, alive])


# --- the sweep with its selection step -----------------------------------------------------------


def random_problem(seed=0, rows=12, cols=40):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(cols, 300, generator=gen)
    inputs = (torch.eye(cols) + torch.randn(cols, cols, generator=gen) / cols**0.5) @ inputs
    delta = 0.02 * torch.randn(rows, cols, generator=gen)
    safety = torch.randn(rows, cols, generator=gen)
    fisher = torch.rand(rows, cols, generator=gen)
    return delta, safety, fisher, 2.0 / 300 * inputs @ inputs.T


def test_a_chooser_returning_a_fixed_mask_is_the_fixed_mask_sweep_bit_for_bit():
    delta, _, _, hessian = random_problem()
    mask = torch.rand(delta.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    fixed = obs_recalibrate(delta, hessian, mask, block_size=BLOCK, refine_steps=3)
    adaptive, chosen = obs_recalibrate_adaptive(
        delta, hessian, lambda s, e, _b: mask[:, s:e], block_size=BLOCK, refine_steps=3
    )
    assert torch.equal(fixed, adaptive) and torch.equal(chosen, mask)


def test_adaptive_selection_agrees_in_block_zero_and_differs_later():
    delta, safety, fisher, hessian = random_problem(seed=2)
    settings = IRRSettings(rho=1.0, block_size=BLOCK, mask_selection="adaptive")
    fixed_mask, fixed_candidates = identify(delta, safety, fisher, settings)
    kept, adaptive_mask, candidates = recalibrate_adaptive(delta, safety, fisher, hessian, settings)
    assert torch.equal(adaptive_mask[:, :BLOCK], fixed_mask[:, :BLOCK])
    assert not torch.equal(adaptive_mask, fixed_mask)
    assert candidates == int(adaptive_mask.sum()) and fixed_candidates == int(fixed_mask.sum())
    want, removed = reference_irr(
        delta,
        safety,
        fisher,
        hessian,
        1.0,
        rules={"ties": "earlier", "rounding": "half-up", "zero": False, "dead": "keep"},
    )
    assert torch.equal(removed, adaptive_mask)
    torch.testing.assert_close(kept.double(), want, rtol=0, atol=1e-5)


def test_adaptive_needs_the_block_budget():
    for budget in ("matrix", "global"):
        with pytest.raises(RealignError, match="needs --budget block"):
            IRRSettings(mask_selection="adaptive", budget=budget).check()
    with pytest.raises(RealignError, match="--ties later"):
        IRRSettings(ties="later", budget="global").check()
    with pytest.raises(RealignError, match="--dead-columns zero"):
        IRRSettings(dead_columns="zero", budget="global").check()
    with pytest.raises(RealignError, match="unknown --ties 'first'"):
        IRRSettings(ties="first").check()


# --- calibration inputs --------------------------------------------------------------------------


def test_calibration_from_raw_text_token_ids_and_the_official_format(tmp_path):
    tok = make_tokenizer()
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "Mix flour and eggs."}, {"text": "abc"}])
    settings = IRRSettings(text_column="text", calibration_rows="first")
    got = [e.ids for e in calibration_examples(text, tok, settings)]
    assert got == [tok("Mix flour and eggs.")["input_ids"], tok("abc")["input_ids"]]

    ids = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [5, 6, 7]}, {"input_ids": [9] * 80}])
    got = calibration_examples(ids, tok, IRRSettings(max_length=64), vocab_size=320)
    assert sorted(e.ids for e in got) == [[5, 6, 7], [9] * 64]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_ids": [5]}, {"input_ids": [5, 400]}])
    with pytest.raises(RealignError, match="row 2: token id 400 is outside .* 320"):
        calibration_examples(bad, tok, IRRSettings(calibration_rows="first"), vocab_size=320)
    text_ids = write_jsonl(tmp_path / "t.jsonl", [{"input_ids": "5 6"}])
    with pytest.raises(RealignError, match="must be a list of integers"):
        calibration_examples(text_ids, tok, IRRSettings())

    from realignkit.eval.generate import LLAMA2_SYSTEM_PROMPT

    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", INSTRUCTIONS)
    official = IRRSettings.official(
        num_samples=3, max_length=4000, prompt_column="instruction", response_column="output"
    )
    rows = calibration_examples(alpaca, tok, official)
    assert len(rows) == 3
    for row, source in zip(rows, INSTRUCTIONS[:3], strict=True):  # the first rows, in order
        assert row.ids[-1] == tok.eos_token_id
        prompt = tok.decode(row.ids[: row.response_start])
        assert LLAMA2_SYSTEM_PROMPT in prompt
        assert f"{source['instruction']}\n{source['input']}<|end|>" in prompt
        assert tok.decode(row.ids[row.response_start : -1]) == source["output"]


def test_left_eos_batches_count_every_position():
    tok = make_tokenizer()
    from realignkit.calib.text import Encoded

    rows = [Encoded([7, 8, 9], 1), Encoded([4, 5], 0), Encoded([6], 0)]
    settings = IRRSettings(hessian_padding="left-eos", max_length=6, batch_size=2)
    batches = calibration_batches(rows, tok, settings)
    assert batches[0]["input_ids"].tolist() == [[2, 2, 2, 7, 8, 9], [2, 2, 2, 2, 4, 5]]
    assert all(bool(b["attention_mask"].all()) for b in batches)
    assert batches[1]["input_ids"].tolist() == [[2, 2, 2, 2, 2, 6]]
    right = calibration_batches(rows, tok, IRRSettings(batch_size=2))
    assert right[0]["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_few_calibration_tokens_warn_with_the_numbers_and_still_run(tmp_path, caplog):
    world = make_world(tmp_path / "w", "llama")
    world["calib"] = write_jsonl(tmp_path / "short.jsonl", [{"prompt": "hi"}])
    with caplog.at_level(logging.WARNING, logger="realignkit.methods.irr"):
        result = run_irr(world, tmp_path / "out", rho=0.5)
    assert result.removed > 0 and any(result.path.glob("*.safetensors"))
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "fewer than the 64 inputs of" in message and "mlp.down_proj" in message
    assert "damping" in message
    with pytest.raises(RealignError, match="--min-calibration-tokens 1000"):
        run_irr(world, tmp_path / "refused", rho=0.5, min_calibration_tokens=1000)
    assert not (tmp_path / "refused").exists()


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_official_sets_every_behaviour_and_explicit_options_win(tmp_path):
    world = official_world(tmp_path / "llama", "llama")
    common = [
        "irr",
        "--finetuned",
        world["ft"],
        "--base",
        world["base"],
        "--safety-vector",
        world["sv"],
        "--fisher",
        world["fisher"],
        "--calibration",
        world["calib"],
        "--prompt-column",
        "instruction",
        "--response-column",
        "output",
        "--device",
        "cpu",
        "--num-samples",
        "4",
    ]
    official = ["--official", "--max-length", LENGTH, "--ties", "earlier", "--true-sequential"]
    main([str(a) for a in [*common, *official, "-o", tmp_path / "a"]])
    meta = json.loads((tmp_path / "a" / "irr.json").read_text())["settings"]
    assert meta["mask_selection"] == "adaptive" and meta["ties"] == "earlier"
    assert meta["count_rounding"] == "keep-floor" and meta["zero_is_conflict"] is True
    assert meta["dead_columns"] == "zero" and meta["hessian_padding"] == "left-eos"
    assert meta["calibration_format"] == "official" and meta["calibration_rows"] == "first"
    assert meta["block_size"] == 128 and meta["max_length"] == LENGTH
    assert meta["modules"] == ["q_proj", "v_proj"]
    main([str(a) for a in [*common, "--mask-selection", "adaptive", "-o", tmp_path / "b"]])
    meta = json.loads((tmp_path / "b" / "irr.json").read_text())["settings"]
    assert meta["mask_selection"] == "adaptive" and meta["ties"] == "earlier"
    assert meta["hessian_padding"] == "real-tokens" and meta["max_length"] == 512
    card = (tmp_path / "b" / "README.md").read_text()
    assert "chosen inside the sweep" in card


# --- realignkit's defaults are what they were ----------------------------------------------------


@pytest.fixture(scope="module")
def default_outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("irr-defaults")
    with one_thread():  # a module fixture runs before conftest's one_torch_thread
        worlds = {arch: make_world(root / arch, arch) for arch in ("llama", "gpt2")}
        return pinned_runs(root / "runs", worlds)


@pytest.mark.skipif(
    torch.__version__ != TORCH_VERSION,
    reason=f"digests were computed with torch {TORCH_VERSION}",
)
def test_default_outputs_are_bit_identical_to_the_pre_official_implementation(default_outputs):
    got = {key: tensors_digest(folder) for key, folder in default_outputs.items()}
    kind = cpu_kind()
    if kind not in PINNED_BY_CPU:
        pytest.skip(f"no IRR digests recorded on a {kind} CPU: python tests/irr_pinned.py")
    assert got == PINNED_BY_CPU[kind]


def test_default_outputs_are_close_to_the_pre_official_fingerprints(default_outputs):
    got = {key: fingerprint(folder) for key, folder in default_outputs.items()}
    assert far_from_pins(got, load_fingerprints("irr"), {"llama-recal-refine": REFINED_RTOL}) == {}


def test_registry_recipe_takes_the_official_settings(tmp_path):
    from realignkit.methods.registry import RealignJob, load_all

    world = make_world(tmp_path / "w", "llama")
    job = RealignJob(
        aligned=world["base"],
        safety_vector=world["sv"],
        finetuned=world["ft"],
        harmful=world["harm"],
        calibration=world["calib"],
        workdir=tmp_path / "work",
        params={"official": True, "max_length": 64, "ties": "earlier", "block_size": 8},
    )
    done = load_all()["irr"](job, tmp_path / "out")
    assert done.info["mask_selection"] == "adaptive" and done.info["removed"] > 0
    meta = json.loads((done.model / "irr.json").read_text())["settings"]
    assert meta["ties"] == "earlier" and meta["hessian_padding"] == "left-eos"
    assert meta["max_length"] == 64 and meta["block_size"] == 8
