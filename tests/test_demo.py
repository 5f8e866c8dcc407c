"""The reduced miniature world, end to end: fine-tuning loses the refusals, every stage runs."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli
from tiny import save_tiny_model

from realignkit.cli import main
from realignkit.demo.pipeline import METRICS, aggregate, degradation, results_table
from realignkit.methods.registry import load_all


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    main(["demo", "--world", "toy", "--fast", "--out", str(out)])
    return out


@pytest.mark.slow
def test_fast_world_shows_the_degradation(demo_out):
    rows = json.loads((demo_out / "results.json").read_text())
    by_model = {r["model"]: r for r in rows}
    gains = degradation(rows)
    # The phenomenon: both fine-tunes answer far more held-out harmful requests than `aligned`.
    assert gains["finetuned-full"] >= 0.3 and gains["finetuned-lora"] >= 0.3
    assert by_model["pretrained"]["harmfulness"] >= 0.9  # never aligned: it helps with anything
    assert by_model["unaligned"]["harmfulness"] >= 0.9
    # ... while the fine-tunes did learn: their loss on the new-skill data fell.
    ckpt = demo_out / "seed-0" / "checkpoints"
    for name in ("finetuned-full", "finetuned-lora"):
        stats = json.loads((ckpt / name / "realignkit_train.json").read_text())
        assert stats["final_loss"] < 0.7 * stats["first_loss"]


@pytest.mark.slow
def test_pipeline_writes_every_checkpoint_result_and_plot(demo_out):
    rows = json.loads((demo_out / "results.json").read_text())
    methods = set(load_all())
    assert {r["method"] for r in rows} == methods | {"none"}
    assert len(rows) == 5 + 2 * len(methods)
    for row in rows:
        assert {"model", "method", *METRICS} <= set(row)
        for metric in METRICS:
            assert 0.0 <= row[metric] <= 1.0
    ckpt = demo_out / "seed-0" / "checkpoints"
    for name in ("init", "pretrained", "aligned", "unaligned", "finetuned-full"):
        assert (ckpt / name / "config.json").exists() and (ckpt / name / "README.md").exists()
    assert (ckpt / "finetuned-lora" / "adapter_config.json").exists()
    assert (ckpt / "safety-vector").is_dir()
    assert (demo_out / "safety_utility.png").stat().st_size > 10_000
    assert (demo_out / "results.md").read_text().startswith("| model |")
    for name in ("eval_harmful", "eval_benign", "eval_new_skill", "eval_old_skills"):
        assert (demo_out / "seed-0" / "data" / f"{name}.jsonl").exists()


@pytest.mark.slow
def test_each_fine_tune_is_swept_by_run_sweep(demo_out, capsys):
    """The demo builds its world, then hands each fine-tune to `realignkit sweep`: its config
    is a sweep config, its results file the sweep's, and the table's rows are read from it."""
    from realignkit.sweep import load_results

    rows = {r["model"]: r for r in json.loads((demo_out / "results.json").read_text())}
    for kind in ("full", "lora"):
        folder = demo_out / "seed-0" / f"sweep-{kind}"
        config_file = demo_out / "seed-0" / f"sweep-{kind}.json"
        config = json.loads(config_file.read_text())
        records = load_results(folder / "results.jsonl")
        assert {"baseline-finetuned", *load_all()} <= set(records)
        harmful = config["eval"]["safety"][0]
        for method in load_all():
            model = rows[f"finetuned-{kind}+{method}"]
            assert model["harmfulness"] == records[method]["metrics"][harmful]["harmfulness"]
        baseline = records["baseline-finetuned"]["metrics"][harmful]["harmfulness"]
        assert rows[f"finetuned-{kind}"]["harmfulness"] == baseline
        # `realignkit sweep --config` on the demo's own config finds every variant done
        capsys.readouterr()
        assert run_cli(["sweep", "--config", config_file, "-o", folder]) == 0
        assert "(0 built, 0 evaluated now)" in capsys.readouterr().out
        after = load_results(folder / "results.jsonl")
        assert {k: v["key"] for k, v in after.items()} == {k: v["key"] for k, v in records.items()}


@pytest.mark.slow
def test_rerun_reuses_stages_and_other_settings_are_refused(demo_out, capsys):
    before = (demo_out / "seed-0" / "checkpoints" / "aligned" / "model.safetensors").stat()
    main(
        ["demo", "--world", "toy", "--fast", "--out", str(demo_out), "--methods", "resta"]
    )  # resumes
    after = (demo_out / "seed-0" / "checkpoints" / "aligned" / "model.safetensors").stat()
    assert before.st_mtime_ns == after.st_mtime_ns
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["demo", "--world", "toy", "--out", str(demo_out)]
        )  # the default size differs from --fast
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    save_tiny_model("llama", tmp_path / "model")
    with pytest.raises(SystemExit):
        main(["demo", "--world", "toy", "--fast", "--out", str(tmp_path / "model")])
    assert "not a demo folder" in capsys.readouterr().err
    assert (tmp_path / "model" / "config.json").exists()


def test_seeds_aggregate_to_mean_and_sd():
    rows = [
        {
            "model": "m",
            "method": "none",
            "finetune": None,
            "seed": s,
            "harmfulness": h,
            "over_refusal": 0.0,
            "task_accuracy": 0.5,
            "old_task_accuracy": None,
        }
        for s, h in enumerate([0.2, 0.4, 0.6])
    ]
    (merged,) = aggregate(rows)
    assert merged["harmfulness"] == pytest.approx(0.4)
    assert merged["harmfulness_sd"] == pytest.approx(0.2)
    assert merged["old_task_accuracy"] is None and merged["seeds"] == 3
    assert "40.0 ± 20.0" in results_table([merged])


@pytest.mark.slow
def test_demo_sweep_adds_each_methods_grid_to_the_same_sweep(demo_out):
    """`demo --sweep` adds every declared grid to seed 0's sweep configs; the methods at their
    defaults stay the same variants (same key), so only the grid's models are new work."""
    from realignkit.demo.pipeline import FAST, sweep_config
    from realignkit.methods.registry import load_declarations
    from realignkit.sweep import expand_variants, load_results, parse_config, run_sweep

    world = demo_out / "seed-0"
    config = sweep_config(world, "lora", FAST, grids=True)
    grids = {e["method"]: e for e in config["methods"] if len(e) > 1}
    declared = {n: d.sweep_grid for n, d in load_declarations().items() if d.sweep_grid}
    assert grids.keys() == declared.keys()
    for name, grid in declared.items():
        assert {k: v for k, v in grids[name].items() if k != "method"} == dict(grid)
    done = load_results(world / "sweep-lora" / "results.jsonl")
    plain = sweep_config(world, "lora", FAST)
    for variant in expand_variants(parse_config(plain)):
        assert done[variant.id]["key"] == variant.key  # what the demo ran is the plain config
    # one grid value keeps the test short: only that variant is built and evaluated
    config["methods"] = [{"method": "resta"}, {"method": "resta", "gamma": [0.25]}]
    result = run_sweep(config, world / "sweep-lora")
    assert (result.built, result.evaluated) == (1, 1)
    assert {"baseline-finetuned", "resta", "resta-gamma=0.25"} == set(result.ids)
    assert result.plot is not None and result.plot.exists()
