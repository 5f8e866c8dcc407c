"""SafeMERGE on the four tiny architectures against a float64 reference with explicit C."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, load_folder_tensors, run_cli
from tiny import ARCHITECTURES, build_tiny_model, perturbed_copy, save_tiny_model

from realignkit.ops.selection import is_selected

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2 stores (in, out)


def make_world(root: Path, arch: str) -> dict[str, Path]:
    pretrained = build_tiny_model(arch, seed=0)
    aligned = perturbed_copy(pretrained, seed=1, scale=0.02)
    return {
        "P": save_tiny_model(arch, root / "P", model=pretrained),
        "A": save_tiny_model(arch, root / "A", model=aligned),
        "F": save_tiny_model(arch, root / "F", model=perturbed_copy(aligned, seed=2)),
        "S": save_tiny_model(arch, root / "S", model=perturbed_copy(aligned, seed=3)),
    }


def edited(name: str, t: torch.Tensor) -> bool:
    return is_selected(name, t.ndim, frozenset())


def reference_similarities(world: dict[str, Path]) -> dict[str, float]:
    """ρ = cos(C·ΔF, ΔF) in float64 with C = V·Vᵀ/‖V‖_F formed explicitly."""
    p, a, f = (load_folder_tensors(world[k]) for k in "PAF")
    out = {}
    for name, w_f in f.items():
        if not edited(name, w_f):
            continue
        flip = any(part in name for part in CONV1D)
        v, delta = a[name].double() - p[name].double(), w_f.double() - a[name].double()
        if flip:
            v, delta = v.T, delta.T
        c = v @ v.T / torch.linalg.matrix_norm(v)
        projected = c @ delta
        out[name] = float((projected * delta).sum() / (projected.norm() * delta.norm()))
    return out


def reference_ties(deltas: list[torch.Tensor], weights: list[float], density: float):
    """TIES entry by entry, the way the paper describes it (float64, plain loops)."""
    flat = [d.reshape(-1).tolist() for d in deltas]
    n = len(flat[0])
    keep = min(n, int(-(-density * n // 1)))
    trimmed = []
    for values in flat:
        order = sorted(range(n), key=lambda i: (-abs(values[i]), i))[:keep]
        kept = set(order)
        trimmed.append([values[i] if i in kept else 0.0 for i in range(n)])
    merged = []
    for i in range(n):
        total = sum(w * t[i] for w, t in zip(weights, trimmed, strict=True))
        sign = (total > 0) - (total < 0)
        agree = [
            (w, t[i])
            for w, t in zip(weights, trimmed, strict=True)
            if t[i] != 0 and ((t[i] > 0) - (t[i] < 0)) == sign
        ]
        mass = sum(w for w, _ in agree)
        merged.append(sum(w * x for w, x in agree) / mass if mass > 0 else 0.0)
    return torch.tensor(merged, dtype=torch.float64).reshape(deltas[0].shape)


def run_safemerge(world: dict[str, Path], out: Path, *options: str) -> int:
    return run_cli(
        ["safemerge", "--finetuned", world["F"], "--aligned", world["A"]]
        + ["--pretrained", world["P"], "--safety-model", world["S"], *options, "-o", out]
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_linear_safemerge_matches_float64_reference(tmp_path: Path, arch: str) -> None:
    world = make_world(tmp_path, arch)
    similarities = reference_similarities(world)
    ranked = sorted(similarities.values())
    middle = len(ranked) // 2
    tau = (ranked[middle - 1] + ranked[middle]) / 2  # half the layers merged, none on the edge
    out = tmp_path / "out"
    assert run_safemerge(world, out, "--threshold", str(tau), "--weight", "0.3") == 0
    got = load_folder_tensors(out)
    a, f, s = (load_folder_tensors(world[k]) for k in "AFS")
    merged = 0
    for name, value in got.items():
        if name in similarities and similarities[name] < tau:
            merged += 1
            expected = 0.7 * s[name].double() + 0.3 * f[name].double()
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(value, f[name]), name  # not merged: θ_F bit for bit
    assert merged == middle
    meta = json.loads((out / "realignkit.json").read_text())
    assert meta["method"] == "safemerge" and meta["parameters"]["threshold"] == tau
    for name, sim in similarities.items():
        assert meta["weights"][name]["similarity"] == pytest.approx(sim, abs=1e-5)
        assert meta["weights"][name]["merged"] == (sim < tau)
    assert set(meta["inputs"]) == {"finetuned", "aligned", "pretrained", "safety_finetune"}
    assert all(v["fingerprint"].startswith("sha256:") for v in meta["inputs"].values())
    assert "SafeMERGE" in (out / "README.md").read_text()

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_ties_safemerge_matches_the_entrywise_reference(tmp_path: Path) -> None:
    world = make_world(tmp_path, "qwen2")
    out = tmp_path / "out"
    options = ["--threshold", "1", "--merge", "ties", "--weight", "0.6", "--density", "0.4"]
    assert run_safemerge(world, out, *options) == 0  # τ = 1: every layer (ρ < 1) merged
    got = load_folder_tensors(out)
    a, f, s = (load_folder_tensors(world[k]) for k in "AFS")
    name = "model.layers.1.mlp.down_proj.weight"
    deltas = [f[name].double() - a[name].double(), s[name].double() - a[name].double()]
    expected = a[name].double() + reference_ties(deltas, [0.6, 0.4], 0.4)
    torch.testing.assert_close(got[name].double(), expected, rtol=0, atol=1e-6)


def test_bad_inputs_and_parameters(tmp_path: Path, capsys) -> None:
    world = make_world(tmp_path, "llama")
    capsys.readouterr()
    code = run_cli(
        ["safemerge", "--finetuned", world["F"], "--aligned", world["A"]]
        + ["--pretrained", world["P"], "-o", tmp_path / "out"]
    )
    assert_one_line_error(capsys, code, "safemerge needs --safety-model")
    code = run_safemerge(world, tmp_path / "out", "--merge", "average")
    assert_one_line_error(capsys, code, "--merge must be one of linear, ties", "average")
    code = run_safemerge(world, tmp_path / "out", "--density", "0")
    assert_one_line_error(capsys, code, "--density must be in (0, 1]")
    code = run_cli(
        ["safemerge", "--finetuned", world["F"], "--aligned", world["A"]]
        + ["--pretrained", world["A"], "--safety-model", world["S"], "-o", tmp_path / "out"]
    )
    assert_one_line_error(capsys, code, "same in the aligned and the pre-trained model")
    assert not (tmp_path / "out").exists()


def test_lora_finetune_and_lora_safety_finetune(tmp_path: Path) -> None:
    """--base/--adapter and --safety-adapter give the model their merged checkpoints give."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model

    pretrained = build_tiny_model("mistral", seed=0)
    aligned = perturbed_copy(pretrained, seed=1, scale=0.02)
    world = {
        "P": save_tiny_model("mistral", tmp_path / "P", model=pretrained),
        "A": save_tiny_model("mistral", tmp_path / "A", model=aligned),
    }
    for role, seed in (("ft", 2), ("safe", 3)):
        peft_model = get_peft_model(
            copy.deepcopy(aligned), LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"])
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(0.2 * torch.randn(param.shape, generator=gen))
        peft_model.save_pretrained(tmp_path / role)
        merged = PeftModel.from_pretrained(copy.deepcopy(aligned), tmp_path / role)
        save_tiny_model("mistral", tmp_path / f"{role}-merged", model=merged.merge_and_unload())
    common = ["--aligned", world["A"], "--pretrained", world["P"], "--threshold", "1"]
    assert (
        run_cli(
            ["safemerge", "--base", world["A"], "--adapter", tmp_path / "ft"]
            + ["--safety-adapter", tmp_path / "safe", *common, "-o", tmp_path / "o1"]
        )
        == 0
    )
    assert (
        run_cli(
            ["safemerge", "--finetuned", tmp_path / "ft-merged"]
            + ["--safety-model", tmp_path / "safe-merged", *common, "-o", tmp_path / "o2"]
        )
        == 0
    )
    one, two = load_folder_tensors(tmp_path / "o1"), load_folder_tensors(tmp_path / "o2")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6, msg=name)
    meta = json.loads((tmp_path / "o1" / "realignkit.json").read_text())
    assert {"base", "adapter", "safety_base", "safety_adapter"} <= set(meta["inputs"])
