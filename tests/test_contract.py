"""The method contract and the executor: declarations checked once, outputs bit-identical.

The digests below were computed from the code path before RESTA, DARE and the safety vector
moved onto the executor (commit bf17f86); the executor must reproduce every byte of every
weight file.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, run_cli
from tiny import build_tiny_model, perturbed_copy, save_tiny_model

PINNED: dict[str, str] = {
    "llama-sv": "07d44880845d1ce6cb96555ef7ed3615a72beaea31c3327c27166b73ce6938aa",
    "llama-resta": "b3e804940cb20fe3b7bd7b1523973684cf19b3e9961259e5cef4ad6353572b06",
    "llama-resta-g07-shards": "b5bb2f38201e38927e6b52d5b52c1d9ee2296cae42426f4f39af39140f8a45d5",
    "llama-dare": "09d9d284f6c9ba4a7cb1d61c8e865adc108484493849cf0c6c56632df64d8aa7",
    "gpt2-sv": "7e2e0a79e4d5b3512ffc33b7152ed165da92368bc117c9ea81a1d0e2a57f8493",
    "gpt2-resta": "06f24f50d7a67868d0f6ce1bd18a7d04b2b12de1d03f184b0e305f6c44c885d0",
    "gpt2-resta-g07-shards": "c68957dbec1158837e7e49b6282cc30d89cf849788adbdbfd3ee758ad35eec5b",
    "gpt2-dare": "d6143d3f18e796be2b8bf1bba2c8f37d03897302f161aca259bc726f2a5a6b88",
    "sv-lowrank": "4974fe6a7d6e9562a64aa82c4ead9f8df33ad94f6585d0ca1d62d61d86a98e37",
    "resta-adapter-lowrank": "1572dba0bf67af627da59fd4ef34e42c77eb5e5511011c25186578594b380a06",
}


def weights_digest(folder: Path) -> str:
    """sha256 of every weight file's name and bytes (and the shard index)."""
    h = hashlib.sha256()
    files = sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.index.json"))
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def pinned_world(root: Path) -> dict[str, Path]:
    """Llama and GPT-2 worlds (A, U, F) plus GPT-2 LoRA adapters, all from fixed seeds."""
    from peft import LoraConfig, get_peft_model

    world: dict[str, Path] = {}
    for arch in ("llama", "gpt2"):
        aligned = build_tiny_model(arch, seed=0)
        world[f"{arch}-A"] = save_tiny_model(arch, root / f"{arch}-A", model=aligned)
        world[f"{arch}-U"] = save_tiny_model(
            arch, root / f"{arch}-U", model=perturbed_copy(aligned, seed=1)
        )
        world[f"{arch}-F"] = save_tiny_model(
            arch, root / f"{arch}-F", model=perturbed_copy(aligned, seed=2)
        )
    aligned = build_tiny_model("gpt2", seed=0)
    for role, seed in (("ft", 1), ("unaligned", 2)):
        torch.manual_seed(seed)
        peft_model = get_peft_model(
            copy.deepcopy(aligned),
            LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True),
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        peft_model.save_pretrained(root / f"lora-{role}")
        world[f"lora-{role}"] = root / f"lora-{role}"
    return world


def pinned_runs(root: Path, world: dict[str, Path]) -> dict[str, Path]:
    """Every pinned CLI run; returns the output folder of each."""
    outs: dict[str, Path] = {}

    def run(key: str, args: list) -> None:
        out = root / key
        assert run_cli([*args, "-o", out]) == 0, key
        outs[key] = out

    for arch in ("llama", "gpt2"):
        w = {k.split("-")[1]: v for k, v in world.items() if k.startswith(arch + "-")}
        run(f"{arch}-sv", ["safety-vector", "--aligned", w["A"], "--unaligned", w["U"]])
        sv = outs[f"{arch}-sv"]
        run(f"{arch}-resta", ["resta", "--finetuned", w["F"], "--safety-vector", sv])
        run(
            f"{arch}-resta-g07-shards",
            ["resta", "--finetuned", w["F"], "--safety-vector", sv, "--gamma", "0.7"]
            + ["--max-shard-size", "50KB"],
        )
        run(
            f"{arch}-dare",
            ["resta", "--finetuned", w["F"], "--base", w["A"], "--safety-vector", sv]
            + ["--dare", "0.3", "--seed", "5", "--include", "all"]
            + ["--dare-stream", "mt19937"],  # the pre-contract masks (pcg64: tests/test_dare.py)
        )
    run(
        "sv-lowrank",
        ["safety-vector", "--aligned", world["gpt2-A"], "--unaligned-adapter"]
        + [world["lora-unaligned"]],
    )
    run(
        "resta-adapter-lowrank",
        ["resta", "--base", world["gpt2-A"], "--adapter", world["lora-ft"]]
        + ["--safety-vector", outs["sv-lowrank"], "--dare", "0.2", "--dare-stream", "mt19937"],
    )
    return outs


def test_outputs_are_bit_identical_to_the_pre_contract_code(tmp_path: Path) -> None:
    world = pinned_world(tmp_path / "world")
    outs = pinned_runs(tmp_path, world)
    got = {key: weights_digest(folder) for key, folder in outs.items()}
    assert got == PINNED


# -- declarations drive validation -----------------------------------------------------------


def test_parameters_are_checked_from_their_declaration() -> None:
    from realignkit.errors import RealignError
    from realignkit.methods.resta import RESTA

    assert RESTA.resolve({}) == {
        "gamma": 0.5,
        "dare_p": None,
        "seed": 0,
        "dare_stream": "pcg64",
        "include": (),
    }
    assert RESTA.resolve({"gamma": "0.25", "include": "all"})["gamma"] == 0.25
    with pytest.raises(RealignError, match=r"no parameter 'gama'; its parameters: gamma, dare_p"):
        RESTA.resolve({"gama": 0.3})
    with pytest.raises(RealignError, match=r"^--dare must be in \[0, 1\), got 1.0$"):
        RESTA.resolve({"dare_p": 1.0})
    with pytest.raises(RealignError, match="must be a finite float32 number"):
        RESTA.resolve({"gamma": float("inf")})
    with pytest.raises(RealignError, match="must be a finite float32 number"):
        RESTA.resolve({"gamma": "abc"})
    with pytest.raises(RealignError, match="--include: unknown tensor kind 'embedings'"):
        RESTA.resolve({"include": ["embedings"]})
    with pytest.raises(RealignError, match="resta.seed cannot be swept"):
        RESTA.resolve({"seed": 3}, where="sweep config: ", sweep=True)


@pytest.mark.parametrize(
    ("methods", "needles"),
    [
        ({"resta": {"gama": [0.3, 1.0]}}, ["method 'resta' has no parameter 'gama'", "gamma"]),
        ({"resta+dare": {"dare_p": [0.3, 1.5]}}, ["resta+dare.dare_p must be in [0, 1)", "1.5"]),
        ({"resta": {"gamma": ["x"]}}, ["resta.gamma must be a finite float32 number"]),
        ({"resta": {"seed": [1, 2]}}, ["resta.seed cannot be swept", "gamma"]),
    ],
)
def test_sweep_grid_errors_come_from_declarations(tmp_path: Path, capsys, methods, needles) -> None:
    """The issue's misspelt grid fails in one line before any model is built."""
    import yaml

    aligned = build_tiny_model("llama", seed=0)
    a = save_tiny_model("llama", tmp_path / "A", model=aligned)
    u = save_tiny_model("llama", tmp_path / "U", model=perturbed_copy(aligned, seed=1))
    config = {
        "models": {"aligned": str(a), "unaligned": str(u), "finetuned": str(u)},
        "methods": methods,
        "eval": {"safety": ["harmful:x.jsonl"], "utility": ["qa:y.jsonl"]},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    code = run_cli(["sweep", "--config", tmp_path / "sweep.yaml", "-o", tmp_path / "out"])
    assert_one_line_error(capsys, code, *needles)
    assert not (tmp_path / "out").exists()


# -- new methods join the registry, the CLI and the sweep by their module alone --------------


def test_declared_methods_join_registry_cli_and_sweep(tmp_path: Path, capsys) -> None:
    import json

    from realignkit.cli.app import app
    from realignkit.methods.registry import load_all, load_methods
    from realignkit.sweep import run_sweep

    recipes, methods = load_all(), load_methods()
    assert {"resta", "resta+dare", "safedelta", "safemerge"} <= set(methods) <= set(recipes)
    commands = {c.name for c in app.registered_commands}
    assert {"resta", "safedelta", "safemerge"} <= commands and "resta+dare" not in commands

    pretrained = build_tiny_model("llama", seed=0)
    aligned = perturbed_copy(pretrained, seed=1, scale=0.02)
    root = tmp_path / "world"
    models = {
        "pretrained": save_tiny_model("llama", root / "P", model=pretrained),
        "aligned": save_tiny_model("llama", root / "A", model=aligned),
        "unaligned": save_tiny_model("llama", root / "U", model=perturbed_copy(aligned, seed=2)),
        "finetuned": save_tiny_model("llama", root / "F", model=perturbed_copy(aligned, seed=3)),
        "safety_model": save_tiny_model("llama", root / "S", model=perturbed_copy(aligned, seed=4)),
    }
    rows = [
        {"prompt": f"How do I do harm number {i}?", "response": "I cannot help."} for i in range(12)
    ]
    (root / "safe.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = {
        "models": {k: str(v) for k, v in models.items()},
        "data": {"harmful": str(root / "safe.jsonl")},
        "methods": {
            "resta+dare": {"gamma": 0.5},
            "safemerge": {"threshold": [0.2, 1.0], "merge": "ties"},
            "safedelta": {"budget": [0.0, 1e30], "selection": "paper"},
        },
        "baselines": [],
        "eval": {"safety": ["harmful:x"], "utility": ["qa:y"]},
    }
    seen = {}

    def fake_evaluate(model, *, adapter, out_dir, name, cache_dir, safety, utility):
        seen[name] = model
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"scores": {"harmfulness": 0.5, "utility": 0.5}, "metrics": {}}

    result = run_sweep(config, tmp_path / "out", evaluate_fn=fake_evaluate)
    assert result.built == 5 and sorted(seen) == sorted(result.ids)
    from helpers import load_folder_tensors

    f = load_folder_tensors(models["finetuned"])
    name = "model.layers.0.self_attn.q_proj.weight"
    every = load_folder_tensors(
        tmp_path / "out" / "variants" / "safedelta-budget=1e+30-selection=paper"
    )
    assert torch.equal(every[name], f[name])  # an unlimited budget keeps the whole fine-tune
    dare = json.loads(
        (tmp_path / "out" / "variants" / "resta+dare-gamma=0.5" / "realignkit.json").read_text()
    )
    assert dare["parameters"]["dare_p"] == 0.3  # the recipe's declared starting point
    assert set(dare["inputs"]) == {"finetuned", "base", "safety_vector"}

    # a declared input the config lacks is named before any work
    del config["models"]["safety_model"]
    from realignkit.errors import RealignError

    with pytest.raises(RealignError, match="method 'safemerge' needs models.safety_model"):
        run_sweep(config, tmp_path / "out2", evaluate_fn=fake_evaluate)


def test_every_output_carries_one_metadata_schema(tmp_path: Path) -> None:
    import json

    aligned = build_tiny_model("gpt2", seed=0)
    a = save_tiny_model("gpt2", tmp_path / "A", model=aligned)
    u = save_tiny_model("gpt2", tmp_path / "U", model=perturbed_copy(aligned, seed=1))
    f = save_tiny_model("gpt2", tmp_path / "F", model=perturbed_copy(aligned, seed=2))
    assert run_cli(["safety-vector", "--aligned", a, "--unaligned", u, "-o", tmp_path / "sv"]) == 0
    out = tmp_path / "out"
    assert run_cli(["resta", "--finetuned", f, "--safety-vector", tmp_path / "sv", "-o", out]) == 0
    meta = json.loads((out / "realignkit.json").read_text())
    assert set(meta) == {
        "format", "schema", "method", "method_version", "realignkit_version", "parameters",
        "inputs", "summary", "edited", "copied", "weights",
        "written_by", "written", "command",  # the writer's mark: what --overwrite may replace
    }  # fmt: skip
    assert meta["method"] == "resta" and meta["parameters"]["gamma"] == 0.5
    assert meta["edited"] == 8 and meta["copied"] == 20
    fingerprints = {k: v["fingerprint"] for k, v in meta["inputs"].items()}
    assert set(fingerprints) == {"finetuned", "safety_vector"}
    # fingerprints tell two fine-tunes of one model apart (same names, shapes and sizes)
    from realignkit.checkpoint.fingerprint import fingerprint

    assert fingerprint(f) == fingerprints["finetuned"] != fingerprint(u)


def test_cli_options_come_from_declarations(capsys) -> None:
    """Every declared parameter is an option of its command, with its help and range."""
    from realignkit.methods.registry import load_methods

    for method in load_methods().values():
        if not method.cli:
            continue
        capsys.readouterr()
        assert run_cli([method.name, "--help"]) == 0
        import re

        text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
        for param in method.params:
            assert param.option in text, (method.name, param.option)
            assert " ".join(param.help.split()[:4]) in text, (method.name, param.name)


def test_a_new_method_needs_no_edit_outside_its_module() -> None:
    """SafeMERGE and Safe Delta are named nowhere in the registry, executor, sweep or CLI."""
    import re

    import realignkit

    package = Path(realignkit.__file__).parent
    shared = [package / "execute.py", package / "sweep.py", package / "methods" / "registry.py"]
    shared += sorted((package / "cli").glob("*.py"))
    for path in shared:
        text = path.read_text().lower()
        assert not re.search(r"\bsafe ?(merge|delta)\b", text), path.name


# Safe LoRA (full fine-tunes) moved onto the executor later: its tensors (names, dtypes, shapes,
# bytes) are pinned from the hand-written pipeline. The files' bytes differ: the old pipeline
# wrote unplanned shards, the executor writes planned ones (same tensors, other layout).
PINNED_SAFELORA_TENSORS = {
    "llama-safelora-full": "a77c739afba67463b25978d0b9d8d95386c3a48d1b3f82b79be06bbf6e48146f",
    "gpt2-safelora-full": "337bf60abd5fe9d48008cfcc5d9b6468e0fc770fe8d88ce2c042dca9f6259d6b",
    "qwen2-safelora-full": "50958a6733ba4d817987ab735149d946988c102a9d15593d575b6fc54bac620d",
}


def tensors_digest(folder: Path) -> str:
    from helpers import load_folder_tensors

    h = hashlib.sha256()
    tensors = load_folder_tensors(folder)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("arch", "option", "projected"),
    [("llama", ["--num-layers", "5"], 5), ("gpt2", ["--threshold", "0.5"], 2),
     ("qwen2", ["--threshold", "0.7"], 6)],
)  # fmt: skip
def test_safelora_full_is_bit_identical_on_the_executor(tmp_path, arch, option, projected):
    import json

    pretrained = build_tiny_model(arch, seed=0)
    aligned = perturbed_copy(pretrained, seed=1, scale=0.02)
    p = save_tiny_model(arch, tmp_path / "P", model=pretrained)
    a = save_tiny_model(arch, tmp_path / "A", model=aligned)
    f = save_tiny_model(arch, tmp_path / "F", model=perturbed_copy(aligned, seed=2))
    out = tmp_path / "out"
    args = ["safelora", "--full", "--finetuned", f, "--aligned", a, "--pretrained", p, *option]
    assert run_cli([*args, "--max-shard-size", "40KB", "-o", out]) == 0
    assert tensors_digest(out) == PINNED_SAFELORA_TENSORS[f"{arch}-safelora-full"]
    layers = json.loads((out / "safelora.json").read_text())["layers"]
    assert sum(layer["projected"] for layer in layers) == projected
    assert json.loads((out / "realignkit.json").read_text())["method"] == "safelora-full"
