"""The public Python API: every exported name resolves, and `import realignkit` stays light."""

from __future__ import annotations

import subprocess
import sys

import realignkit


def test_every_export_resolves() -> None:
    for name in realignkit.__all__:
        assert getattr(realignkit, name) is not None, name
    assert callable(realignkit.resta) and callable(realignkit.evaluate)
    assert "resta" in realignkit.load_recipes()


def test_import_does_not_pull_torch() -> None:
    code = "import sys, realignkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resta_in_python_writes_what_the_command_writes(tmp_path) -> None:
    """The README's call, on opened inputs, equals `realignkit resta` tensor for tensor."""
    import json

    import torch
    from helpers import load_folder_tensors, run_cli
    from tiny import build_tiny_model, perturbed_copy, save_tiny_model

    aligned = build_tiny_model("qwen2", seed=0)
    a = save_tiny_model("qwen2", tmp_path / "A", model=aligned)
    u = save_tiny_model("qwen2", tmp_path / "U", model=perturbed_copy(aligned, seed=1))
    f = save_tiny_model("qwen2", tmp_path / "F", model=perturbed_copy(aligned, seed=2))
    realignkit.compute_safety_vector(a, tmp_path / "sv", unaligned=u)
    with (
        realignkit.FinetunedWeights(f, base=a) as ft,
        realignkit.SafetyVector(tmp_path / "sv") as sv,
    ):
        result = realignkit.resta(ft, sv, tmp_path / "py", gamma=0.3, dare_p=0.2, seed=4)
    args = ["resta", "--finetuned", f, "--base", a, "--safety-vector", tmp_path / "sv"]
    args += ["--gamma", "0.3", "--dare", "0.2", "--seed", "4", "-o", tmp_path / "cli"]
    assert run_cli(args) == 0
    python, cli = load_folder_tensors(tmp_path / "py"), load_folder_tensors(tmp_path / "cli")
    assert python.keys() == cli.keys() and all(torch.equal(python[k], cli[k]) for k in cli)
    assert result.path == tmp_path / "py" and len(result.edited) > 0 and len(result.copied) > 0
    meta = json.loads((tmp_path / "py" / "realignkit.json").read_text())
    assert meta["parameters"]["gamma"] == 0.3 and meta["parameters"]["dare_p"] == 0.2
