"""Safe LoRA on tiny real checkpoints and adapters, against a float64 reference of the formula."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, folder_digest, load_folder_tensors, run_cli
from safetensors.torch import load_file
from tiny import build_tiny_model, make_tokenizer, perturbed_copy, save_tiny_model

from realignkit.ops.projection import (
    apply_alignment_projection,
    frobenius_cosine,
    lowrank_cosine,
    product_order,
    select_for_projection,
)

TARGETS = {
    "llama": ["q_proj", "v_proj", "gate_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D: (in, out) storage, non-square c_attn/c_fc
}
PREFIX = "base_model.model."


# -- pure functions -------------------------------------------------------------------------------


def test_projection_orders_equal_the_explicit_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(24, 40, generator=gen, dtype=torch.float64)
    c = v @ v.T / torch.linalg.matrix_norm(v)
    for columns in (3, 40, 200):  # thin B (V·(Vᵀ·X)), a wide delta (V·Vᵀ first), in between
        x = torch.randn(24, columns, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(apply_alignment_projection(v, x), c @ x, rtol=1e-12, atol=0)
    assert product_order(4096, 4096, 16) == "vt_x"
    assert product_order(4096, 11008, 11008) == "gram"  # down_proj delta: out < in
    assert product_order(11008, 4096, 4096) == "vt_x"  # up_proj delta: in < out
    with pytest.raises(ValueError):
        apply_alignment_projection(torch.zeros(3, 4), torch.ones(3, 2))


def test_lowrank_cosine_equals_the_dense_cosine() -> None:
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    b = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    a = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    pb = apply_alignment_projection(v, b)
    dense = frobenius_cosine(pb @ a, b @ a)
    flat = torch.nn.functional.cosine_similarity((pb @ a).reshape(1, -1), (b @ a).reshape(1, -1))
    assert abs(dense - float(flat)) < 1e-12
    assert abs(lowrank_cosine(pb, b, a) - dense) < 1e-12
    assert lowrank_cosine(pb, torch.zeros_like(b), a) == 1.0  # no update: nothing to project
    assert frobenius_cosine(torch.zeros(2, 2), torch.ones(2, 2)) == 0.0


def test_selection_rules() -> None:
    sims = [0.9, 0.2, 0.5, 0.2, 0.7]
    assert select_for_projection(sims, threshold=0.5) == [False, True, True, True, False]
    assert select_for_projection(sims, num_layers=2) == [False, True, False, True, False]
    # a tie at the boundary: exactly K layers, the earlier one wins
    assert select_for_projection(sims, num_layers=1) == [False, True, False, False, False]


# -- the world: pre-trained P, aligned A, a LoRA adapter on A, a full fine-tune F of A ------------


def make_world(root: Path, arch: str, *, tokenizer_in_adapter: bool = True) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model

    pretrained = build_tiny_model(arch, seed=0)
    aligned = perturbed_copy(pretrained, seed=1, scale=0.02)
    world = {
        "P": save_tiny_model(arch, root / "P", model=pretrained),
        "A": save_tiny_model(arch, root / "A", model=aligned),
        "F": save_tiny_model(arch, root / "F", model=perturbed_copy(aligned, seed=2)),
    }
    config = LoraConfig(
        r=4, lora_alpha=12, target_modules=TARGETS[arch], fan_in_fan_out=arch == "gpt2"
    )
    peft_model = get_peft_model(copy.deepcopy(aligned), config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(root / "L")
    if tokenizer_in_adapter:
        make_tokenizer().save_pretrained(root / "L")
    world["L"] = root / "L"
    return world


def lora_reference(world: dict[str, Path], arch: str) -> dict[str, dict]:
    """Per adapted weight, in float64: similarity, C·B, and the scale, from the formula."""
    a, p = load_folder_tensors(world["A"]), load_folder_tensors(world["P"])
    lora = load_file(world["L"] / "adapter_model.safetensors")
    config = json.loads((world["L"] / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    out = {}
    for key in lora:
        if ".lora_B." not in key:
            continue
        module = key.removeprefix(PREFIX).removesuffix(".lora_B.weight")
        name = f"{module}.weight"
        v = a[name].double() - p[name].double()
        if arch == "gpt2":  # Conv1D stores (in, out): the output space is its second axis
            v = v.T
        c = v @ v.T / torch.linalg.matrix_norm(v)  # the d×d matrix, on purpose (reference)
        b = lora[key].double()
        lora_a = lora[key.replace("lora_B", "lora_A")].double()
        delta = scale * b @ lora_a
        cos = torch.nn.functional.cosine_similarity(
            (c @ delta).reshape(1, -1), delta.reshape(1, -1)
        )
        out[name] = {"key": key, "sim": float(cos), "cb": c @ b, "c": c, "scale": scale}
    return out


def _check_adapter_output(world, arch, out, reference, projected: set[str]) -> None:
    before = load_file(world["L"] / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert sorted(after) == sorted(before)  # PEFT's key names kept exactly
    for name, ref in reference.items():
        key = ref["key"]
        a_key = key.replace("lora_B", "lora_A")
        assert torch.equal(after[a_key], before[a_key])
        if name in projected:
            torch.testing.assert_close(after[key].double(), ref["cb"], rtol=0, atol=1e-6)
            assert not torch.allclose(after[key], before[key])
        else:
            assert torch.equal(after[key], before[key]), name
    meta = json.loads((out / "safelora.json").read_text())
    sims = {layer["name"]: layer for layer in meta["layers"]}
    assert sorted(sims) == sorted(reference)
    for name, ref in reference.items():
        assert abs(sims[name]["similarity"] - ref["sim"]) < 1e-6, name
        assert sims[name]["projected"] == (name in projected)
    card = (out / "README.md").read_text()
    for name, ref in reference.items():
        verdict = "yes" if name in projected else "no"
        assert f"| {name} | {ref['sim']:.6f} | {verdict} |" in card
    assert (out / "adapter_config.json").read_bytes() == (
        world["L"] / "adapter_config.json"
    ).read_bytes()
    assert (out / "tokenizer.json").exists()


def _merged_deltas_match(world, arch, out, reference, projected: set[str]) -> None:
    """PEFT itself loads the output, merges it as C·B·A (fan_in_fan_out included), generates."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(world["A"])
    model = PeftModel.from_pretrained(base, out)
    tok = make_tokenizer()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4
    merged = model.merge_and_unload().state_dict()
    aligned = load_folder_tensors(world["A"])
    lora = load_file(world["L"] / "adapter_model.safetensors")
    for name, ref in reference.items():
        b = ref["cb"] if name in projected else lora[ref["key"]].double()
        lora_a = lora[ref["key"].replace("lora_B", "lora_A")].double()
        delta = ref["scale"] * b @ lora_a
        expected = aligned[name].double() + (delta.T if arch == "gpt2" else delta)
        torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adapter_threshold_matches_reference_and_loads_in_peft(tmp_path: Path, arch: str) -> None:
    world = make_world(tmp_path, arch)
    before = {k: folder_digest(p) for k, p in world.items()}
    reference = lora_reference(world, arch)
    sims = sorted(ref["sim"] for ref in reference.values())
    threshold = (sims[len(sims) // 2 - 1] + sims[len(sims) // 2]) / 2  # half are projected
    projected = {n for n, ref in reference.items() if ref["sim"] <= threshold}
    assert 0 < len(projected) < len(reference)
    out = tmp_path / "out"
    args = ["safelora", "--adapter", world["L"], "--aligned", world["A"]]
    args += ["--pretrained", world["P"], "--threshold", repr(threshold), "-o", out]
    assert run_cli(args) == 0
    _check_adapter_output(world, arch, out, reference, projected)
    _merged_deltas_match(world, arch, out, reference, projected)
    assert {k: folder_digest(p) for k, p in world.items()} == before


def test_adapter_num_layers_picks_the_least_similar(tmp_path: Path) -> None:
    world = make_world(tmp_path, "gpt2", tokenizer_in_adapter=True)
    reference = lora_reference(world, "gpt2")
    ranked = sorted(reference, key=lambda n: reference[n]["sim"])
    out = tmp_path / "out"
    args = ["safelora", "--adapter", world["L"], "--aligned", world["A"]]
    args += ["--pretrained", world["P"], "--num-layers", "2", "--workers", "1", "-o", out]
    assert run_cli(args) == 0
    _check_adapter_output(world, "gpt2", out, reference, set(ranked[:2]))
    assert "| num_layers | 2 |" in (out / "README.md").read_text()


def full_reference(world: dict[str, Path], arch: str) -> dict[str, dict]:
    a, p, f = (load_folder_tensors(world[k]) for k in "APF")
    linears = [n for n in f if ".layers." in n or ".h." in n]
    out = {}
    for name in linears:
        if f[name].ndim != 2:
            continue
        v = a[name].double() - p[name].double()
        delta = f[name].double() - a[name].double()
        if arch == "gpt2":
            v, delta = v.T, delta.T
        c = v @ v.T / torch.linalg.matrix_norm(v)
        cd = c @ delta
        cos = torch.nn.functional.cosine_similarity(cd.reshape(1, -1), delta.reshape(1, -1))
        edited = a[name].double() + (cd.T if arch == "gpt2" else cd)
        out[name] = {"sim": float(cos), "edited": edited}
    return out


@pytest.mark.parametrize(("arch", "rule"), [("llama", "num_layers"), ("gpt2", "threshold")])
def test_full_finetune_matches_reference(tmp_path: Path, arch: str, rule: str) -> None:
    world = make_world(tmp_path, arch)
    before = {k: folder_digest(p) for k, p in world.items()}
    reference = full_reference(world, arch)
    ranked = sorted(reference, key=lambda n: reference[n]["sim"])
    if rule == "num_layers":
        projected, option = set(ranked[:5]), ["--num-layers", "5"]
    else:
        k = len(ranked) // 2
        cut = (reference[ranked[k - 1]]["sim"] + reference[ranked[k]]["sim"]) / 2
        projected, option = set(ranked[:k]), ["--threshold", repr(cut)]
    out = tmp_path / "out"
    args = ["safelora", "--full", "--finetuned", world["F"], "--aligned", world["A"]]
    args += ["--pretrained", world["P"], *option, "--max-shard-size", "40KB", "-o", out]
    assert run_cli(args) == 0
    got, finetuned = load_folder_tensors(out), load_folder_tensors(world["F"])
    assert sorted(got) == sorted(finetuned)
    for name, value in got.items():
        if name in projected:
            torch.testing.assert_close(value.double(), reference[name]["edited"], rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, finetuned[name]), name
    meta = json.loads((out / "safelora.json").read_text())
    assert {m["name"] for m in meta["layers"]} == set(reference)
    for layer in meta["layers"]:
        assert abs(layer["similarity"] - reference[layer["name"]]["sim"]) < 1e-6
        assert layer["projected"] == (layer["name"] in projected)
    assert (out / "model.safetensors.index.json").exists()
    assert {k: folder_digest(p) for k, p in world.items()} == before
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert (
        model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=3, do_sample=False).shape[1] == 6
    )


def test_recipe_returns_the_aligned_model_with_the_adapter(tmp_path: Path) -> None:
    from realignkit.methods.registry import RealignJob, load_all

    world = make_world(tmp_path, "llama", tokenizer_in_adapter=False)
    recipes = load_all()
    job = RealignJob(
        aligned=world["A"],
        safety_vector=tmp_path / "unused",
        adapter=world["L"],
        pretrained=world["P"],
        params={"num_layers": 3},
    )
    realigned = recipes["safelora"](job, tmp_path / "out")
    assert realigned.model == world["A"] and realigned.adapter == tmp_path / "out"
    assert realigned.info["projected"] == 3
    reference = lora_reference(world, "llama")
    ranked = sorted(reference, key=lambda n: reference[n]["sim"])
    after = load_file(tmp_path / "out" / "adapter_model.safetensors")
    for name in ranked[:3]:
        torch.testing.assert_close(
            after[reference[name]["key"]].double(), reference[name]["cb"], rtol=0, atol=1e-6
        )


# -- bad input: one line, exit 2, no output, inputs untouched -----------------------------------


@pytest.fixture()
def llama_world(tmp_path: Path) -> dict[str, Path]:
    return make_world(tmp_path / "w", "llama", tokenizer_in_adapter=False)


def _expect_failure(capsys, tmp_path: Path, args: list, world: dict, *needles: str) -> None:
    before = {k: folder_digest(p) for k, p in world.items()}
    capsys.readouterr()
    code = run_cli(["safelora", *args, "-o", tmp_path / "out"])
    assert_one_line_error(capsys, code, *needles)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))
    assert {k: folder_digest(p) for k, p in world.items()} == before


def test_bad_adapter_for_another_base(tmp_path, capsys, llama_world) -> None:
    w = llama_world
    gpt2 = make_world(tmp_path / "g", "gpt2", tokenizer_in_adapter=False)
    models = ["--aligned", w["A"], "--pretrained", w["P"]]
    _expect_failure(
        capsys,
        tmp_path,
        ["--adapter", gpt2["L"], *models],
        w,
        "transformer.h.",
        "c_attn.weight",
        "not in model",
    )
    # same architecture, other width: the shape mismatch names the tensor
    from peft import LoraConfig, get_peft_model

    wide = get_peft_model(
        build_tiny_model("llama", intermediate_size=48),
        LoraConfig(r=2, target_modules=["down_proj"]),
    )
    wide.save_pretrained(tmp_path / "wide")
    _expect_failure(
        capsys,
        tmp_path,
        ["--adapter", tmp_path / "wide", *models],
        w,
        "model.layers.0.mlp.down_proj.weight",
        "(32, 48)",
    )
    # a pre-trained model of another width than the aligned one
    other_p = save_tiny_model(
        "llama", tmp_path / "P2", model=build_tiny_model("llama", intermediate_size=48)
    )
    _expect_failure(
        capsys,
        tmp_path,
        ["--adapter", w["L"], "--aligned", w["A"], "--pretrained", other_p],
        w,
        "mlp",
        "shape",
    )


def test_bad_not_a_lora_adapter(tmp_path, capsys, llama_world) -> None:
    w = llama_world
    models = ["--aligned", w["A"], "--pretrained", w["P"]]
    _expect_failure(capsys, tmp_path, ["--adapter", w["A"], *models], w, "not a PEFT adapter")
    ia3 = tmp_path / "ia3"
    shutil.copytree(w["L"], ia3)
    config = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    _expect_failure(capsys, tmp_path, ["--adapter", ia3, *models], w, "IA3", "not LoRA")


def test_bad_same_aligned_and_pretrained(tmp_path, capsys, llama_world) -> None:
    w = llama_world
    args = ["--adapter", w["L"], "--aligned", w["A"], "--pretrained", w["A"]]
    _expect_failure(capsys, tmp_path, args, w, "model.layers.0.", "same in the aligned")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--threshold", "0.3", "--num-layers", "2"], "not both"),
        (["--num-layers", "0"], "at least 1"),
        (["--num-layers", "99"], "exceeds the 8 layers"),
        (["--threshold", "1.5"], "[-1, 1]"),
        (["--full"], "--full needs --finetuned"),
        (["--finetuned", "F"], "--finetuned goes with --full"),
    ],
)
def test_bad_options(tmp_path, capsys, llama_world, options, needle) -> None:
    w = llama_world
    args = ["--adapter", w["L"], "--aligned", w["A"], "--pretrained", w["P"]]
    if "--finetuned" in options:
        options = ["--finetuned", w["F"]]
    _expect_failure(capsys, tmp_path, [*args, *options], w, needle)


def test_existing_output_is_refused(tmp_path, capsys, llama_world) -> None:
    w = llama_world
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    capsys.readouterr()
    args = ["safelora", "--adapter", w["L"], "--aligned", w["A"], "--pretrained", w["P"]]
    code = run_cli([*args, "-o", tmp_path / "out"])
    assert_one_line_error(capsys, code, "exists", "--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
