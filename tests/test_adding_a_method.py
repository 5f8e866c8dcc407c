"""Adding a method is one new module in ``methods/`` and nothing else.

The package is copied to a temporary folder, one module is added to its ``methods/`` (a
declaration and its tensor function: a task-arithmetic toy, θ_B + λ·(θ_F − θ_B) + γ·v), and a
fresh interpreter that imports the copy is asked everything a user would ask of a method:
the CLI's command list, the method's own command with its options and their help, a run, an
out-of-range value, ``realignkit plan``, the sweep's grid validation and a sweep, both demos'
method lists, ``tune``'s list of strengths and the Python call. No other file of the copy is
edited, so whatever answers was derived from the declaration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_folder_tensors
from tiny import build_tiny_model, perturbed_copy, save_tiny_model

import realignkit

NEW_METHOD = '''
"""Task arithmetic (a test's toy): θ_B + λ·(θ_F − θ_B) + γ·v."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from realignkit.contract import Edit, Method, Param, WeightInputs


def edit_weight(given: WeightInputs, params: Mapping[str, Any]) -> Edit:
    assert given.base is not None and given.safety_vector is not None
    base = given.base.float()
    task = given.finetuned.float() - base
    edited = base + params["lam"] * task + params["gamma"] * given.safety_vector.float()
    return Edit(edited, {"task_norm": float(task.norm())})


TASK_ARITHMETIC = Method(
    name="task-arithmetic",
    version=1,
    summary="The task delta scaled by lambda, plus gamma times the safety vector.",
    kind="weight",
    params=(
        Param("lam", float, 1.0, "Scale of the task delta.", low=0.0, high=2.0),
        Param("gamma", float, 0.5, "Scale of v.", low=0.0, safer="higher", search=(0.0, 2.0)),
    ),
    needs=frozenset({"finetuned", "base", "safety_vector"}),
    edit_weight=edit_weight,
    sweep_grid={"gamma": [0.25, 1.0]},
    paper={"lam": 1.0, "gamma": 0.5},
)
'''

# Run in the fresh interpreter: each probe's exit code and output (CLI) or value (Python).
PROBES = """
import contextlib, io, json, sys
from pathlib import Path

paths = json.loads(sys.argv[1])
root = Path(paths["root"])
found = {}


def cli(key, *args):
    from realignkit.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as stop:
            code = int(stop.code or 0)
    found[key] = {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def python(key, call):
    try:
        found[key] = call()
    except Exception as err:  # the message is what the test reads
        found[key] = f"{type(err).__name__}: {err}"


inputs = ["--finetuned", paths["F"], "--base", paths["A"], "--safety-vector", paths["sv"]]
cli("list", "--help")
cli("help", "task-arithmetic", "--help")
cli("run", "task-arithmetic", *inputs, "--lam", "0.5", "-o", root / "out")
cli("out_of_range", "task-arithmetic", *inputs, "--lam", "3", "-o", root / "bad")
cli("plan", "plan", "task-arithmetic", *inputs, "-o", root / "planned")
cli("dry_run", "task-arithmetic", *inputs, "-o", root / "dry", "--dry-run")
cli("toy_demo", "demo", "--world", "toy", "--methods", "task-arithmetic,nope", "-o", root / "demo")

from realignkit.sweep import run_sweep

models = {"aligned": paths["A"], "unaligned": paths["U"], "finetuned": paths["F"]}
config = {
    "models": models,
    "methods": {"task-arithmetic": {"lamb": [0.3, 1.0]}},
    "baselines": [],
    "eval": {"safety": ["harmful:x"], "utility": ["qa:y"]},
}
python("sweep_misspelt", lambda: run_sweep(config, root / "sweep-bad"))


def scores(model, *, adapter, out_dir, name, cache_dir, safety, utility):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return {"scores": {"harmfulness": 0.5, "utility": 0.5}, "metrics": {}}


grid = {**config, "methods": {"task-arithmetic": {"lam": [0.3, 1.0]}}}
python("sweep", lambda: run_sweep(grid, root / "sweep", evaluate_fn=scores).ids)

from realignkit.demo.real.pipeline import Settings

python("real_demo", lambda: Settings(preset="demo").methods)

from realignkit.methods.registry import RealignJob
from realignkit.tuning import tune


def tune_list():
    job = RealignJob(aligned=Path(paths["A"]), safety_vector=Path(paths["sv"]))
    tune("nope", "gamma", target_harmfulness=0.1, job=job, validation_harmful="v",
         test_harmful="t", out_dir=root / "tune")


python("tune", tune_list)

import realignkit


def call():
    output = realignkit.realign(
        "task-arithmetic", root / "api", finetuned=paths["F"], base=paths["A"],
        safety_vector=paths["sv"], lam=0.25, gamma=1.0,
    )
    return output.params


python("api", call)
print("PROBES " + json.dumps(found, default=str))
"""


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, dict[str, Path]]:
    """The probes' answers from a copy of the package with the new module, its folder, and
    the models they ran on."""
    from realignkit.methods.safety_vector import compute_safety_vector

    root = tmp_path_factory.mktemp("new-method")
    package = Path(realignkit.__file__).parent
    copy = root / "src" / "realignkit"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "methods" / "task_arithmetic.py").write_text(NEW_METHOD)
    before = {p.relative_to(package) for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    after = {p.relative_to(copy) for p in copy.rglob("*.py")}
    assert after - before == {Path("methods/task_arithmetic.py")} and before <= after

    aligned = build_tiny_model("llama", seed=0)
    models = {
        "A": save_tiny_model("llama", root / "A", model=aligned),
        "U": save_tiny_model("llama", root / "U", model=perturbed_copy(aligned, seed=1)),
        "F": save_tiny_model("llama", root / "F", model=perturbed_copy(aligned, seed=2)),
    }
    models["sv"] = compute_safety_vector(models["A"], root / "sv", unaligned=models["U"])
    env = {
        **os.environ,
        "PYTHONPATH": str(root / "src"),
        "COLUMNS": "200",  # the help's table on one line per option
        "OMP_NUM_THREADS": "1",
    }
    args = json.dumps({"root": str(root), **{k: str(v) for k, v in models.items()}})
    done = subprocess.run(
        [sys.executable, "-c", PROBES, args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("PROBES "))
    return json.loads(line.removeprefix("PROBES ")), root, models


def error_line(probe: dict) -> str:
    lines = [x for x in probe["err"].splitlines() if x.startswith("error:")]
    assert probe["code"] == 2 and len(lines) == 1, probe
    return lines[0]


def test_the_cli_lists_the_new_command_with_its_declared_options(probed) -> None:
    found, _, _ = probed
    assert found["list"]["code"] == 0
    assert "task-arithmetic" in found["list"]["out"]
    assert "The task delta scaled by lambda" in found["list"]["out"]
    help_text = found["help"]["out"]
    assert found["help"]["code"] == 0
    for option in ("--lam", "--gamma", "--finetuned", "--base", "--safety-vector", "--dry-run"):
        assert option in help_text, option
    assert "Scale of the task delta. (in [0, 2]) Default: 1.0." in help_text
    assert "--aligned" not in help_text and "--safety-data" not in help_text  # not declared


def test_the_new_command_runs_the_declared_function(probed) -> None:
    found, root, models = probed
    assert found["run"]["code"] == 0, found["run"]["err"]
    out, f = load_folder_tensors(root / "out"), load_folder_tensors(models["F"])
    b, v = load_folder_tensors(models["A"]), load_folder_tensors(models["sv"])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(out[name], b[name] + 0.5 * (f[name] - b[name]) + 0.5 * v[name])
    embed = "model.embed_tokens.weight"
    assert torch.equal(out[embed], f[embed])  # outside the blocks: copied
    meta = json.loads((root / "out" / "realignkit.json").read_text())
    assert meta["method"] == "task-arithmetic" and meta["parameters"] == {"lam": 0.5, "gamma": 0.5}
    assert set(meta["inputs"]) == {"finetuned", "base", "safety_vector"}
    assert "task_norm" in meta["weights"][name]


def test_a_value_out_of_its_declared_range_is_one_line(probed) -> None:
    found, root, _ = probed
    assert "--lam must be in [0, 2], got 3" in error_line(found["out_of_range"])
    assert not (root / "bad").exists()


def test_plan_and_dry_run_know_the_new_command(probed) -> None:
    found, root, _ = probed
    for key in ("plan", "dry_run"):
        assert found[key]["code"] == 0, found[key]["err"]
        assert "task-arithmetic: stream" in found[key]["out"]
        assert "reads finetuned, base, safety_vector" in found[key]["out"]
    assert not (root / "dry").exists()


def test_the_sweep_validates_and_builds_the_new_method(probed) -> None:
    found, _, _ = probed
    assert found["sweep_misspelt"] == (
        "RealignError: sweep config: method 'task-arithmetic' has no parameter 'lamb'; "
        "its parameters: lam, gamma"
    )
    assert found["sweep"] == ["task-arithmetic-lam=0.3", "task-arithmetic-lam=1"]


def test_the_demos_tune_and_the_python_api_list_the_new_method(probed) -> None:
    found, _, _ = probed
    # the real-model demo runs every declared paper setting; the toy demo every recipe
    assert found["real_demo"]["task-arithmetic"] == {"lam": 1.0, "gamma": 0.5}
    toy = error_line(found["toy_demo"])
    assert "unknown method 'nope'; present:" in toy and "task-arithmetic" in toy
    assert found["tune"].startswith("RealignError: unknown method 'nope'; tune works on")
    assert "task-arithmetic" in found["tune"]
    assert found["api"] == {"lam": 0.25, "gamma": 1.0}
