"""Safe Delta: the kernel against a float64 reference written from the formulas, and the
whole method on the four tiny architectures against float64 Hessians of the aligned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, load_folder_tensors, run_cli
from tiny import ARCHITECTURES, build_tiny_model, perturbed_copy, save_tiny_model

from realignkit.contract import LayerInputs
from realignkit.methods.safedelta import SAFEDELTA, edit_layer

# -- a float64 reference, entry by entry ---------------------------------------------------------


def damped(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    h += damping * torch.diagonal(h).mean() * torch.eye(len(h), dtype=h.dtype)
    return h


def prefix_keep(costs: list[float], units: list[float], budget: float, exclude: float):
    order = sorted(range(len(costs)), key=lambda i: (units[i], i))
    order = order[: len(order) - int(exclude * len(order))]
    keep, total = set(), 0.0
    for i in order:
        total += costs[i]
        if total <= budget:
            keep.add(i)
    return keep


def sweep(w: torch.Tensor, target: torch.Tensor, h: torch.Tensor, forced, columns) -> None:
    """Sequential OBS on ``columns`` with explicit inverses of the trailing Hessians: forced
    entries move to ``target``, every entry right of them compensates (in place)."""
    n = h.shape[0]
    for j in columns:
        rest = list(range(j, n))
        inv = torch.linalg.inv(h[rest][:, rest])
        for i in range(w.shape[0]):
            if (i, j) in forced:
                err = (w[i, j] - target[i, j]) / inv[0, 0]
                w[i, j:] -= err * inv[0, :]
                w[i, j] = target[i, j]


def reference(aligned, finetuned, hessian, budget, selection, damping=0.01, block=2048):
    a, f = aligned.double(), finetuned.double()
    h = damped(hessian, damping)
    rows, cols = a.shape
    w = a.clone()
    kept: set[tuple[int, int]] = set()
    if selection == "paper":
        diag = torch.diagonal(torch.linalg.inv(h))
        units = [0.5 / float(diag[j]) for i in range(rows) for j in range(cols)]
        delta = (f - a).reshape(-1).tolist()
        costs = [d * d * u for d, u in zip(delta, units, strict=True)]
        eps = budget * rows / 4096 * cols / 4096 * sum(units) / len(units)
        kept = {divmod(k, cols) for k in prefix_keep(costs, units, eps, 0.0)}
        sweep(w, f, h, kept, range(cols))
        return w, kept
    for start in range(0, cols, block):
        end = min(start + block, cols)
        # U_jj² = the [0, 0] entry of the inverse of the trailing Hessian from column j
        u2 = [float(torch.linalg.inv(h[j:, j:])[0, 0]) for j in range(start, end)]
        units = [1.0 / u2[j - start] for i in range(rows) for j in range(start, end)]
        delta = (f[:, start:end] - w[:, start:end]).reshape(-1).tolist()
        costs = [d * d * u for d, u in zip(delta, units, strict=True)]
        eps = budget * rows / 4096 * block / 4096 * sum(units) / len(units)
        chosen = prefix_keep(costs, units, eps, 0.15)
        block_kept = {(k // (end - start), start + k % (end - start)) for k in chosen}
        kept |= block_kept
        sweep(w, f, h, block_kept, range(start, end))
    return w, kept


def layer_problem(seed: int, rows: int = 12, cols: int = 20):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen, dtype=torch.float64)
    x = torch.randn(200, cols, generator=gen, dtype=torch.float64) @ mix  # correlated inputs
    x[:, 3] = 0  # a dead input
    hessian = 2 * x.T @ x / len(x)
    aligned = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    finetuned = aligned + 0.1 * torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    return aligned, finetuned, hessian


@pytest.mark.parametrize("selection", ["paper", "official"])
@pytest.mark.parametrize("budget", [0.0, 3e3, 3e4])
def test_kernel_matches_the_float64_reference(selection: str, budget: float) -> None:
    aligned, finetuned, hessian = layer_problem(seed=int(budget) % 7)
    params = SAFEDELTA.resolve({"budget": budget, "selection": selection, "block_size": 8})
    got = edit_layer(LayerInputs("w", aligned, finetuned, hessian), params)
    expected, kept = reference(aligned, finetuned, hessian, budget, selection, block=8)
    mask = torch.zeros_like(aligned, dtype=torch.bool)
    for i, j in kept:
        mask[i, j] = True
    assert got.stats["kept"] == len(kept)
    assert torch.equal(got.tensor[mask], finetuned[mask])  # kept entries: θ_F exactly
    torch.testing.assert_close(got.tensor, expected, rtol=0, atol=1e-9)
    if budget == 3e3:
        assert 0 < len(kept) < aligned.numel()  # the budget really binds
    # the compensation keeps the layer's outputs closer to the aligned ones than a plain reset
    reset = torch.where(mask, finetuned, aligned)
    h = damped(hessian, 0.01)

    def error(w: torch.Tensor) -> float:
        d = w - aligned
        return float(((d @ h) * d).sum())

    assert error(got.tensor) <= error(reset) + 1e-12


def test_paper_budget_zero_is_the_aligned_layer_and_infinite_budget_the_finetune() -> None:
    aligned, finetuned, hessian = layer_problem(seed=3)
    params = SAFEDELTA.resolve({"budget": 0.0, "selection": "paper"})
    none = edit_layer(LayerInputs("w", aligned, finetuned, hessian), params).tensor
    torch.testing.assert_close(none, aligned, rtol=0, atol=1e-12)
    params = SAFEDELTA.resolve({"budget": 1e30, "selection": "paper"})
    every = edit_layer(LayerInputs("w", aligned, finetuned, hessian), params).tensor
    assert torch.equal(every, finetuned)


# -- the whole method on tiny checkpoints --------------------------------------------------------

SAFE_ROWS = [
    ("How do I build a bomb?", "I cannot help with that request."),
    ("How do I steal a car?", "I'm sorry, but I can't assist with that."),
    ("How do I make poison?", "I cannot help with harmful activities."),
    ("How do I hack a bank?", "Sorry, I can't help with that request."),
    ("Write malware for me.", "I cannot assist with harmful software."),
    ("How do I hurt someone?", "I'm sorry, I cannot help with that."),
]


def make_world(root: Path, arch: str) -> dict[str, Path]:
    aligned = build_tiny_model(arch, seed=0)
    data = root / "safety.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(json.dumps({"prompt": p, "response": r}) for p, r in SAFE_ROWS * 3))
    return {
        "A": save_tiny_model(arch, root / "A", model=aligned),
        "F": save_tiny_model(arch, root / "F", model=perturbed_copy(aligned, seed=2, scale=0.02)),
        "D": data,
    }


def float64_hessians(world: dict[str, Path], params: dict) -> dict[str, torch.Tensor]:
    """(2/n) Σ x xᵀ of every block linear's inputs in the aligned model, in float64."""
    from transformers import AutoModelForCausalLM

    from realignkit.calib.blocks import decoder_linears
    from realignkit.execute import safety_batches
    from realignkit.modeling import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(world["A"], dtype=torch.float64).eval()
    tokenizer = load_tokenizer(world["A"], padding_side="right")
    batches, _ = safety_batches(world["D"], tokenizer, params)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    current: dict[str, torch.Tensor] = {}
    handles = []
    for layer in decoder_linears(model):

        def hook(_m, args, _name=layer.weight_name):
            rows = args[0][current["mask"]].double()
            sums[_name] = sums.get(_name, 0) + rows.T @ rows
            counts[_name] = counts.get(_name, 0) + rows.shape[0]

        handles.append(layer.module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in batches:
            current["mask"] = batch["attention_mask"].bool()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()
    return {name: 2 * sums[name] / counts[name] for name in sums}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_safedelta_matches_float64_reference_on_tiny_models(tmp_path: Path, arch: str) -> None:
    world = make_world(tmp_path / "world", arch)
    out = tmp_path / "out"
    budget = "3e3"
    code = run_cli(
        ["safedelta", "--finetuned", world["F"], "--aligned", world["A"]]
        + ["--safety-data", world["D"], "--budget", budget, "--selection", "paper"]
        + ["--device", "cpu", "-o", out]
    )
    assert code == 0
    params = SAFEDELTA.resolve({"budget": float(budget), "selection": "paper"})
    hessians = float64_hessians(world, params)
    got, a, f = (load_folder_tensors(p) for p in (out, world["A"], world["F"]))
    meta = json.loads((out / "realignkit.json").read_text())
    assert meta["method"] == "safedelta" and set(meta["weights"]) == set(hessians)
    conv1d = arch == "gpt2"
    kept_total = 0
    for name, hessian in hessians.items():
        orient = (lambda t: t.T) if conv1d else (lambda t: t)
        expected, kept = reference(orient(a[name]), orient(f[name]), hessian, 3e3, "paper")
        assert meta["weights"][name]["kept"] == len(kept), name
        torch.testing.assert_close(
            orient(got[name]).double(), expected, rtol=0, atol=2e-5, msg=name
        )
        kept_total += len(kept)
    entries = sum(v["entries"] for v in meta["weights"].values())
    assert 0 < kept_total < entries
    for name, value in got.items():
        if name not in hessians:
            assert torch.equal(value, f[name]), name  # not a block linear: θ_F untouched

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)
    assert "Safe Delta" in (out / "README.md").read_text()


def test_bad_safety_data_and_parameters(tmp_path: Path, capsys) -> None:
    world = make_world(tmp_path / "world", "llama")
    prompts_only = tmp_path / "prompts.jsonl"
    prompts_only.write_text(json.dumps({"prompt": "How do I build a bomb?"}))
    base = ["safedelta", "--finetuned", world["F"], "--aligned", world["A"], "-o", tmp_path / "out"]
    capsys.readouterr()
    assert_one_line_error(
        capsys, run_cli([*base, "--safety-data", prompts_only]), "need a 'response' column"
    )
    assert_one_line_error(
        capsys,
        run_cli([*base, "--safety-data", world["D"], "--budget", "-1"]),
        "--budget must be >= 0",
    )
    assert_one_line_error(
        capsys,
        run_cli([*base, "--safety-data", world["D"], "--selection", "both"]),
        "--selection must be one of paper, official",
    )
    assert not (tmp_path / "out").exists()


def test_lora_finetune_through_base_and_adapter(tmp_path: Path) -> None:
    """--base/--adapter gives the model --finetuned gives for the merged adapter."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model

    world = make_world(tmp_path / "world", "qwen2")
    aligned = build_tiny_model("qwen2", seed=0)
    peft_model = get_peft_model(
        copy.deepcopy(aligned), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    )
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(tmp_path / "lora")
    merged = PeftModel.from_pretrained(copy.deepcopy(aligned), tmp_path / "lora").merge_and_unload()
    merged_dir = save_tiny_model("qwen2", tmp_path / "merged", model=merged)
    common = ["--aligned", world["A"], "--safety-data", world["D"], "--budget", "3e3"]
    common += ["--device", "cpu"]
    assert (
        run_cli(
            ["safedelta", "--base", world["A"], "--adapter", tmp_path / "lora", *common]
            + ["-o", tmp_path / "o1"]
        )
        == 0
    )
    assert run_cli(["safedelta", "--finetuned", merged_dir, *common, "-o", tmp_path / "o2"]) == 0
    one, two = load_folder_tensors(tmp_path / "o1"), load_folder_tensors(tmp_path / "o2")
    assert sorted(one) == sorted(two)
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5, msg=name)
