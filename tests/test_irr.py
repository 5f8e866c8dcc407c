"""IRR end to end on tiny models: block discovery, identification, removal, recalibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_masks import reference_top
from tiny import ARCHITECTURES, build_tiny_model, make_tokenizer, perturbed_copy, save_tiny_model

from realignkit.calib.blocks import block_linears, decoder_linears, find_decoder_blocks
from realignkit.calib.fisher import FisherScores, compute_fisher
from realignkit.calib.hessian import capture_block_inputs, run_block
from realignkit.calib.text import encode_chat, make_batches
from realignkit.checkpoint import CheckpointReader, FinetunedWeights
from realignkit.cli import main
from realignkit.methods.irr import IRRSettings, calibration_examples, irr
from realignkit.methods.safety_vector import SafetyVector, compute_safety_vector

BLOCK = 8  # ranking block width for 32-wide tiny layers, so blocks are exercised

# --- block discovery, for every architecture ---------------------------------------------------

EXPECTED = {
    "llama": (
        "model.layers",
        7,
        [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]],
    ),
    "gpt2": ("transformer.h", 4, [["c_attn"], ["c_proj"], ["c_fc"], ["c_proj"]]),
}
EXPECTED["qwen2"] = EXPECTED["mistral"] = EXPECTED["llama"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_blocks_layers_and_shared_inputs_come_from_the_model(arch):
    from realignkit.calib.blocks import group_by_input

    model = build_tiny_model(arch, seed=1)
    prefix, blocks = find_decoder_blocks(model)
    want_prefix, count, want_groups = EXPECTED[arch]
    assert prefix == want_prefix and len(blocks) == 2
    layers = block_linears(blocks[1], f"{prefix}.1", 1)
    assert len(layers) == count and len(decoder_linears(model)) == 2 * count
    assert all(ly.transposed == (arch == "gpt2") for ly in layers)
    assert all(ly.weight_name in dict(model.named_parameters()) for ly in layers)

    tok = make_tokenizer()
    rows = [
        encode_chat(tok, "How do I bake bread?" * k, "Mix flour.", max_length=60) for k in (1, 3)
    ]
    batches = make_batches(rows, 2, tok.pad_token_id)  # right padding in the first row
    with torch.no_grad():
        calls = capture_block_inputs(model, blocks, batches, torch.device("cpu"))
        groups = group_by_input(layers, lambda: blocks[1](*calls[0].args, **calls[0].kwargs))
        names = [[ly.short.split(".")[-1] for ly in g] for g in groups]
        assert names == want_groups
        # The captured call, replayed block by block, is the model's own forward pass.
        hidden = run_block(blocks[0], calls, [c.hidden() for c in calls])
        reference = model(
            **{k: batches[0][k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
        ).hidden_states
    real = batches[0]["attention_mask"].bool()
    torch.testing.assert_close(calls[0].hidden()[real], reference[0][real])
    torch.testing.assert_close(hidden[0][real], reference[1][real], rtol=1e-5, atol=1e-5)


# --- a small world per architecture --------------------------------------------------------------

HARMFUL = [
    {"prompt": f"How do I hurt person {i}?", "response": "I cannot help with that."}
    for i in range(6)
]
CALIBRATION = [
    {
        "prompt": f"What is {i} plus {2 * i}? Explain.",
        "response": f"First {i}, then {2 * i}: the answer is {3 * i}. #### {3 * i}",
    }
    for i in range(40)
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_world(root: Path, arch: str, **overrides) -> dict[str, Path]:
    root.mkdir(parents=True)
    base = build_tiny_model(arch, seed=0, **overrides)
    world = {
        "base": save_tiny_model(arch, root / "base", model=base),
        "ft": save_tiny_model(arch, root / "ft", model=perturbed_copy(base, seed=1, scale=0.02)),
        "unal": save_tiny_model(
            arch, root / "unal", model=perturbed_copy(base, seed=2, scale=0.02)
        ),
        "harm": write_jsonl(root / "harm.jsonl", HARMFUL),
        "calib": write_jsonl(root / "calib.jsonl", CALIBRATION),
    }
    world["sv"] = compute_safety_vector(world["base"], root / "sv", unaligned=world["unal"])
    world["fisher"] = compute_fisher(
        world["base"], world["harm"], root / "fisher", device="cpu", progress=False
    )
    return world


def run_irr(world, out, *, adapter=None, fisher=True, **settings):
    settings.setdefault("block_size", BLOCK)
    settings.setdefault("device", "cpu")
    if adapter is None:
        weights = FinetunedWeights(world["ft"], base=world["base"])
    else:
        weights = FinetunedWeights(base=world["base"], adapter=adapter)
    scores = FisherScores(world["fisher"]) if fisher else None
    with weights, SafetyVector(world["sv"]) as sv:
        result = irr(
            weights,
            sv,
            out,
            fisher=scores,
            calibration=world["calib"],
            settings=IRRSettings(**settings),
            progress=False,
        )
    if scores is not None:
        scores.close()
    return result


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def world(request, tmp_path_factory):
    arch = request.param
    world = make_world(tmp_path_factory.mktemp(arch) / "w", arch)
    world["arch"] = arch
    world["plain"] = run_irr(world, world["base"].parent / "plain", rho=0.5, recalibrate=False)
    world["recal"] = run_irr(world, world["base"].parent / "recal", rho=0.5)
    return world


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    with CheckpointReader(folder) as ckpt:
        return {n: ckpt.get(n) for n in ckpt.names}


def kernel(t: torch.Tensor, arch: str) -> torch.Tensor:
    return t.T if arch == "gpt2" else t


def test_without_recalibration_exactly_the_identified_entries_are_reset(world):
    arch = world["arch"]
    base, ft, out = tensors(world["base"]), tensors(world["ft"]), tensors(world["plain"].path)
    sv, fisher = tensors(world["sv"]), tensors(world["fisher"])
    assert set(out) == set(ft)
    edited = set(fisher)
    assert edited == {ly.weight_name for ly in decoder_linears(build_tiny_model(arch))}
    for name in ft:
        if name not in edited:
            assert torch.equal(out[name], ft[name]), name
            continue
        delta = kernel(ft[name] - base[name], arch)
        v, score = kernel(sv[name], arch), kernel(fisher[name], arch)
        expected = torch.zeros_like(delta, dtype=torch.bool)
        rows, cols = delta.shape
        for start in range(0, cols, BLOCK):
            cells = [(r, c) for r in range(rows) for c in range(start, min(start + BLOCK, cols))]
            chosen = reference_top(
                [float(score[p]) for p in cells], [bool(delta[p] * v[p] < 0) for p in cells], 0.5
            )
            for i in chosen:
                expected[cells[i]] = True
        expected = kernel(expected, arch)
        assert expected.any()
        assert torch.equal(out[name][expected], base[name][expected]), name
        assert torch.equal(out[name][~expected], ft[name][~expected]), name
    removed = sum(s.removed for s in world["plain"].layers)
    assert removed == world["plain"].removed > 0


def layer_inputs(model, layer_module, batches):
    """Rows of the inputs ``layer_module`` receives on real (non-padding) tokens."""
    seen = []
    mask_now = {}

    def hook(_m, args):
        seen.append(args[0][mask_now["m"]])

    handle = layer_module.register_forward_pre_hook(hook)
    with torch.no_grad():
        for batch in batches:
            mask_now["m"] = batch["attention_mask"].bool()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    return torch.cat(seen)


def test_recalibration_lowers_each_layer_output_error(world):
    from transformers import AutoModelForCausalLM

    arch = world["arch"]
    ft, plain, recal = (
        tensors(world["ft"]),
        tensors(world["plain"].path),
        tensors(world["recal"].path),
    )
    tok = make_tokenizer()
    tok.padding_side = "right"
    batches = make_batches(calibration_examples(world["calib"], tok, IRRSettings()), 8, 0)
    # The inputs layer l of block k saw during IRR: blocks before k edited, block k not yet.
    model = AutoModelForCausalLM.from_pretrained(world["ft"], dtype=torch.float32).eval()
    prefix, blocks = find_decoder_blocks(model)
    compared = 0
    for index in range(len(blocks)):
        for layer in block_linears(blocks[index], f"{prefix}.{index}", index):
            name = layer.weight_name
            x = layer_inputs(model, layer.module, batches).double()
            w_f = kernel(ft[name], arch).double()
            err_plain = ((x @ (kernel(plain[name], arch).double() - w_f).T) ** 2).sum()
            err_recal = ((x @ (kernel(recal[name], arch).double() - w_f).T) ** 2).sum()
            assert err_recal < err_plain, (name, float(err_recal), float(err_plain))
            compared += 1
            # The removed entries are the same ones, reset exactly to the base weight.
            unsafe = plain[name] != ft[name]
            assert torch.equal(recal[name][unsafe], plain[name][unsafe])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for layer in block_linears(blocks[index], f"{prefix}.{index}", index):
                params[layer.weight_name].copy_(recal[layer.weight_name])
    assert compared == len(decoder_linears(model))
    card = (world["recal"].path / "README.md").read_text()
    assert "Entries removed per layer" in card and "R = 1 − s" in card
    stats = json.loads((world["recal"].path / "irr.json").read_text())["layers"]
    assert all(s["error_recalibrated"] < s["error_removed"] for s in stats)


def test_output_is_a_loadable_model(world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world["recal"].path)
    logits = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    assert torch.isfinite(logits).all()
    assert (world["recal"].path / "tokenizer.json").exists()


# --- ablations, adapters, the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("llama") / "w", "llama")


def test_ablations_keep_their_budgets(llama_world, tmp_path):
    runs = {
        key: run_irr(llama_world, tmp_path / key, recalibrate=False, **kw)
        for key, kw in {
            "fisher": {"rho": 0.5},
            "random": {"rho": 0.5, "mask": "random", "seed": 3},
            "magnitude": {"rho": 0.5, "mask": "magnitude"},
            "all": {"rho": 1.0},
            "nosign": {"rho": 0.25, "use_sign": False},
            "global": {"rho": 0.5, "budget": "global"},
            "matrix": {"rho": 0.5, "budget": "matrix"},
        }.items()
    }
    counts = {k: [s.removed for s in r.layers] for k, r in runs.items()}
    assert counts["random"] == counts["fisher"] == counts["magnitude"]
    sets = {k: tensors(r.path) for k, r in runs.items() if k in ("fisher", "random", "magnitude")}
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(sets["fisher"][name], sets["random"][name])
    assert not torch.equal(sets["fisher"][name], sets["magnitude"][name])
    assert all(s.removed == s.candidates for s in runs["all"].layers)
    assert all(s.candidates == s.entries for s in runs["nosign"].layers)
    assert all(s.removed == int(0.25 * s.entries + 0.5) for s in runs["nosign"].layers)
    total = sum(s.candidates for s in runs["global"].layers)
    assert runs["global"].removed == int(0.5 * total + 0.5)
    assert [s.removed for s in runs["matrix"].layers] == [
        int(0.5 * s.candidates + 0.5) for s in runs["matrix"].layers
    ]
    # R = 0 changes nothing at all.
    zero = run_irr(llama_world, tmp_path / "zero", rho=0.0, recalibrate=False)
    assert zero.removed == 0
    ft = tensors(llama_world["ft"])
    assert all(torch.equal(t, ft[n]) for n, t in tensors(zero.path).items())


def test_lora_adapter_gives_the_same_result_as_its_merged_model(llama_world, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llama_world["base"], dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = build_tiny_model("llama", seed=0)
    with FinetunedWeights(base=llama_world["base"], adapter=tmp_path / "adapter") as ft:
        state = {n: ft.get(n) for n in ft.names}
    merged.load_state_dict(state, strict=False)
    world = dict(llama_world, ft=save_tiny_model("llama", tmp_path / "merged", model=merged))

    from_adapter = run_irr(llama_world, tmp_path / "a", adapter=tmp_path / "adapter", rho=0.5)
    from_merged = run_irr(world, tmp_path / "m", rho=0.5)
    assert [s.removed for s in from_adapter.layers] == [s.removed for s in from_merged.layers]
    assert from_adapter.removed > 0
    a, m = tensors(from_adapter.path), tensors(from_merged.path)
    for name in a:
        torch.testing.assert_close(a[name], m[name], rtol=1e-5, atol=1e-6)
    assert "adapter" in (from_adapter.path / "README.md").read_text()


def test_cli_irr_with_module_selection(llama_world, tmp_path):
    out = tmp_path / "out"
    main(
        [
            "irr",
            "--finetuned",
            str(llama_world["ft"]),
            "--base",
            str(llama_world["base"]),
            "--safety-vector",
            str(llama_world["sv"]),
            "--fisher",
            str(llama_world["fisher"]),
            "--calibration",
            str(llama_world["calib"]),
            "--sparsity",
            "0.25",
            "--modules",
            "q_proj,v_proj",
            "--device",
            "cpu",
            "-o",
            str(out),
        ]
    )
    meta = json.loads((out / "irr.json").read_text())
    assert meta["settings"]["rho"] == 0.75
    names = [s["name"] for s in meta["layers"]]
    assert names and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in names)
    ft, result = tensors(llama_world["ft"]), tensors(out)
    assert torch.equal(
        result["model.layers.0.self_attn.k_proj.weight"],
        ft["model.layers.0.self_attn.k_proj.weight"],
    )


# --- bad input: one line, exit code 2, nothing written --------------------------------------------


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    return {
        "wider": make_world(root / "wider", "llama", intermediate_size=48),
        "gpt2": make_world(root / "gpt2", "gpt2"),
    }


def bad_cases(world, other, tmp: Path):
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    return {
        "fisher-other-arch": (["--fisher", str(other["gpt2"]["fisher"])], "transformer.h.0"),
        "fisher-other-shape": (
            ["--fisher", str(other["wider"]["fisher"])],
            "'model.layers.0.mlp.gate_proj.weight' has shape (48, 32)",
        ),
        "sv-other-shape": (
            ["--safety-vector", str(other["wider"]["sv"])],
            "'model.layers.0.mlp.gate_proj.weight' has shape (48, 32)",
        ),
        "empty-calibration": (["--calibration", str(empty)], "empty"),
        "rho-high": (["--rho", "1.5"], "--rho must be in [0, 1]"),
        "rho-low": (["--rho", "-0.1"], "--rho must be in [0, 1]"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "fisher-other-arch",
        "fisher-other-shape",
        "sv-other-shape",
        "empty-calibration",
        "rho-high",
        "rho-low",
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(
    case, llama_world, other_models, tmp_path, capsys
):
    extra, message = bad_cases(llama_world, other_models, tmp_path)[case]
    args = {
        "--finetuned": str(llama_world["ft"]),
        "--base": str(llama_world["base"]),
        "--safety-vector": str(llama_world["sv"]),
        "--fisher": str(llama_world["fisher"]),
        "--calibration": str(llama_world["calib"]),
        "--device": "cpu",
    }
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(["irr", *[x for kv in args.items() for x in kv], "-o", str(out)])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_registry_recipe_runs_irr(llama_world, tmp_path):
    from realignkit.methods.registry import RealignJob, load_all

    recipe = load_all()["irr"]
    job = RealignJob(
        aligned=llama_world["base"],
        safety_vector=llama_world["sv"],
        finetuned=llama_world["ft"],
        harmful=llama_world["harm"],
        calibration=llama_world["calib"],
        workdir=tmp_path / "work",
        params={"rho": 0.5, "max_length": 64},
    )
    done = recipe(job, tmp_path / "out")
    assert done.info["removed"] > 0 and (done.model / "irr.json").exists()
    assert any(p.name.startswith("fisher-") for p in (tmp_path / "work").iterdir())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_driver_hessians_cover_real_tokens_only(arch):
    from realignkit.calib.hessian import edit_blockwise

    model = build_tiny_model(arch, seed=2)
    tok = make_tokenizer()
    rows = [encode_chat(tok, "Question " * k, "Answer.", max_length=40) for k in (1, 4, 9)]
    batches = make_batches(rows, 3, tok.pad_token_id)
    assert not batches[0]["attention_mask"].all()  # padding is present
    seen: dict[str, torch.Tensor] = {}

    def record(index, layers, hessians):
        for layer in layers:
            seen[layer.name] = hessians[layer.name].clone()

    edit_blockwise(model, batches, record, device=torch.device("cpu"), progress=False)
    prefix, blocks = find_decoder_blocks(model)
    for index in range(len(blocks)):
        for layer in block_linears(blocks[index], f"{prefix}.{index}", index):
            x = layer_inputs(model, layer.module, batches).double()
            assert x.shape[0] == int(batches[0]["attention_mask"].sum())
            expected = 2.0 / x.shape[0] * x.T @ x
            torch.testing.assert_close(seen[layer.name].double(), expected, rtol=1e-4, atol=1e-6)
