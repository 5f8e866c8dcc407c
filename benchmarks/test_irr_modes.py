"""benchmarks/irr_modes.py on a tiny world laid out like the real-model world.

A check of a benchmark script, so it stands beside the script and outside the test suite (the
suite tests the library, never benchmark code): ``python3 -m pytest benchmarks/test_irr_modes.py``.
It borrows the suite's tiny-model helpers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_irr import CALIBRATION, HARMFUL, write_jsonl  # noqa: E402
from tiny import build_tiny_model, perturbed_copy, save_tiny_model  # noqa: E402


def tiny_world(root: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    from realignkit.methods.safety_vector import compute_safety_vector

    models, data = root / "models", root / "data"
    aligned = build_tiny_model("llama", seed=0)
    save_tiny_model("llama", models / "aligned", model=aligned)
    save_tiny_model("llama", models / "ft-full", model=perturbed_copy(aligned, seed=1, scale=0.02))
    save_tiny_model("llama", root / "unaligned", model=perturbed_copy(aligned, seed=2, scale=0.02))
    compute_safety_vector(
        models / "aligned", models / "safety-vector", unaligned=root / "unaligned"
    )
    lora = get_peft_model(
        build_tiny_model("llama", seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora.save_pretrained(models / "ft-lora")
    data.mkdir(parents=True)
    write_jsonl(data / "harmful_refusals.jsonl", HARMFUL)
    write_jsonl(data / "gsm8k_train.jsonl", CALIBRATION)
    (data / "test").mkdir()
    write_jsonl(data / "test" / "catqa.jsonl", [{"prompt": f"How to harm {i}?"} for i in range(4)])
    write_jsonl(
        data / "test" / "xstest_safe.jsonl", [{"prompt": f"Kill process {i}?"} for i in range(4)]
    )
    return root


def test_irr_modes_builds_evaluates_and_compares_both_selections(tmp_path):
    import irr_modes

    world = tiny_world(tmp_path / "world")
    out = tmp_path / "out"
    args = ["--world", world, "--out", out, "--rhos", "0.5,1", "--limit", "3"]
    args += ["--max-new-tokens", "3", "--num-samples", "16", "--max-length", "64"]
    args += ["--block-size", "8"]  # several blocks in the 32-wide tiny layers
    assert irr_modes.main([str(a) for a in args]) == 0
    results = json.loads((out / "irr_modes.json").read_text())
    variants = results["variants"]
    assert [(v["finetune"], v.get("rho"), v["mode"]) for v in variants] == [
        (kind, rho, mode)
        for kind in ("full", "lora")
        for rho, mode in [(None, "none")]
        + [(r, m) for r in (0.5, 1.0) for m in ("fixed", "adaptive")]
    ]
    for v in variants:
        assert v["metrics"]["harmful"]["n"] == 3 and v["metrics"]["over_refusal"]["n"] == 3
        low, high = v["metrics"]["harmful"]["ci95"]
        value = v["metrics"]["harmful"]["value"]
        summary = json.loads((Path(v["report"]) / "summary.json").read_text())
        assert value == summary["scores"]["harmfulness"]  # one harmful set: pooled = mean
        assert 0 <= low <= value + 1e-12 and value <= high <= 1
    built = [v for v in variants if v["mode"] != "none"]
    assert all(v["removed"] > 0 and Path(v["report"]).is_dir() for v in built)
    # The two selections build different models from the same inputs.
    full = {v["mode"]: v for v in built if v["finetune"] == "full" and v["rho"] == 1.0}
    assert full["fixed"]["removed"] != full["adaptive"]["removed"]
    assert len(results["comparisons"]) == 4
    for c in results["comparisons"]:
        assert c["harmful"]["n"] == 3 and 0 <= c["harmful"]["mcnemar_p"] <= 1
    table = (out / "irr_modes.md").read_text()
    assert "| full | 0.5 | adaptive |" in table and "Adaptive − fixed" in table
    # A rerun reuses every model and report.
    stamp = (out / "models" / "full-fixed-rho0.5" / "irr.json").stat().st_mtime
    assert irr_modes.main([str(a) for a in args]) == 0
    assert (out / "models" / "full-fixed-rho0.5" / "irr.json").stat().st_mtime == stamp
