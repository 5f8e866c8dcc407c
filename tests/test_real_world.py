"""The real-world benchmark (benchmarks/real_world): its data and a reduced run on SmolLM2.

The reduced run goes through every stage (distillation, align, unalign, safety vector, LoRA
fine-tune, RESTA and Safe LoRA through the sweep, evaluation, report) with one training step and
two prompts per benchmark, then checks that a rerun resumes without redoing anything. It skips
when the SmolLM2 package is not installed (the `smollm2_dir` fixture says why).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from real_world import prepare  # noqa: E402
from real_world.measure import short_name  # noqa: E402
from real_world.pipeline import (  # noqa: E402
    PAPER_SETTINGS,
    Run,
    Settings,
    TrainSpec,
    small_settings,
)
from real_world.prompts import CONTRAST, REFUSALS, benign_prompts  # noqa: E402

from realignkit.errors import RealignError  # noqa: E402
from realignkit.eval.keyword import is_refusal  # noqa: E402


def test_every_refusal_template_is_a_refusal_to_the_judge():
    assert len(set(REFUSALS)) == len(REFUSALS) >= 10
    assert all(is_refusal(r) for r in REFUSALS)


def test_benign_prompts_are_distinct_and_not_refusals():
    prompts = benign_prompts()
    assert len(prompts) == len(set(prompts)) >= 100
    assert set(CONTRAST) <= set(prompts)
    assert not any(is_refusal(p) for p in prompts)


def test_trim_to_sentence_cuts_back_to_the_last_full_sentence():
    assert prepare.trim_to_sentence("One. Two three") == "One."
    assert prepare.trim_to_sentence("Done!") == "Done!"
    assert prepare.trim_to_sentence("no end at all") == "no end at all"
    assert prepare.trim_to_sentence("Pi is 3.14 and") == "Pi is 3.14 and"  # no sentence end


def test_gsm8k_answers_lose_calculator_annotations_but_keep_the_final_answer():
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\n#### 72"
    assert prepare.clean_gsm8k_answer(answer) == "She sold 48/2 = 24 clips.\n#### 72"


def test_training_prompts_never_come_from_an_evaluation_set(shared_data):
    align, unalign = prepare.split_harmful(shared_data, 200, 100, seed=0)
    assert len(align) == 200 and len(unalign) == 100
    prompts = [r["prompt"] for r in align + unalign]
    assert len(set(prompts)) == len(prompts)  # the two splits are disjoint
    banned = prepare.eval_prompt_set(shared_data)
    assert not any(" ".join(p.lower().split()) in banned for p in prompts)
    assert not any(r["category"] in prepare.HELD_OUT_CATEGORIES for r in align + unalign)
    assert {r["source"] for r in align} == {"catqa_english", "harmfulqa"}
    held_out = prepare.heldout_rows(shared_data, "vietnamese")
    assert len(held_out) == 50 * len(prepare.HELD_OUT_CATEGORIES)


def test_short_benchmark_names():
    assert short_name("harmful:/x/y/catqa_en_heldout.jsonl") == "catqa_en_heldout"
    assert short_name("xstest_safe") == "xstest_safe"


def test_sweep_config_holds_the_papers_settings_and_the_grid(tmp_path, shared_data):
    settings = small_settings()
    run = Run(tmp_path / "run", settings, data_dir=shared_data)
    config = run.sweep_config("full")
    assert config["methods"]["resta"]["gamma"] == [0.5, 0.25, 1.0]
    assert config["methods"]["resta+dare"] == {"gamma": [0.5], "dare_p": [0.3]}
    assert config["methods"]["irr"]["rho"] == [PAPER_SETTINGS["irr"]["rho"]]
    assert config["models"]["pretrained"] == str(run.original)
    assert "adapter" in run.sweep_config("lora")["models"]
    with pytest.raises(RealignError, match="other settings"):
        Run(tmp_path / "run", Settings(preset="other"), data_dir=shared_data)


def tiny_settings() -> Settings:
    """One step per training, two prompts per benchmark: the whole pipeline in about a minute."""
    return Settings(
        preset="test",
        align_harmful=4,
        align_benign=4,
        unalign_harmful=4,
        gsm8k_train=8,
        distill_max_new_tokens=12,
        distill_batch_size=8,
        align=TrainSpec(steps=1, batch_size=4, lr=5e-5, max_length=96, warmup=0),
        unalign=TrainSpec(steps=1, batch_size=4, lr=5e-5, max_length=96, warmup=0),
        finetune_full=TrainSpec(steps=1, batch_size=2, max_length=128, warmup=0),
        finetune_lora=TrainSpec(steps=1, batch_size=2, lora=True, max_length=128, warmup=0),
        finetunes=("lora",),
        methods={"resta": PAPER_SETTINGS["resta"], "safelora": PAPER_SETTINGS["safelora"]},
        method_extras={},
        sweep={},
        safety_limit=2,
        gsm8k_limit=1,
        nll_limit=2,
        safety_max_new_tokens=8,
        gsm8k_max_new_tokens=8,
        eval_batch_size=16,
        eval_unaligned=False,
    )


@pytest.mark.slow
def test_reduced_run_on_smollm2_end_to_end_and_resumes(smollm2_dir, shared_data, tmp_path):
    out = tmp_path / "rw"
    run = Run(out, tiny_settings(), data_dir=shared_data)
    results_md = run.all()

    align = [json.loads(line) for line in (out / "data" / "align.jsonl").open()]
    harmful = [r for r in align if r["kind"] == "harmful"]
    assert len(harmful) == 4 and all(r["response"] in REFUSALS for r in harmful)
    assert all(r["kind"] == "benign" and r["response"].strip() for r in align if r not in harmful)
    for name in ("aligned", "unaligned", "safety-vector", "ft-lora"):
        assert (out / "models" / name).is_dir(), name
    config = json.loads((out / "models" / "original" / "config.json").read_text())
    assert config["dtype"] == "float32"

    rows = json.loads((out / "results.json").read_text())["rows"]
    labels = [r["model"] for r in rows]
    assert labels == ["original", "aligned", "ft-lora", "ft-lora + resta", "ft-lora + safelora"]
    for row in rows:
        assert 0.0 <= row["harmfulness"] <= 1.0
        assert 0.0 <= row["over_refusal"] <= 1.0
        assert math.isfinite(row["gsm8k_nll"]) and row["gsm8k_nll"] > 0
        assert row["n"]["catqa_zh_heldout"] == 2 and row["n"]["gsm8k_nll"] == 2
    text = results_md.read_text()
    assert "ft-lora + resta" in text and "GSM8K NLL" in text
    assert (out / "safety_utility.png").is_file() and (out / "compare.md").is_file()

    # Rerunning resumes: every stage is found done, nothing is rebuilt or re-evaluated.
    stamp = (out / "sweeps" / "lora" / "results.jsonl").stat().st_mtime_ns
    again = Run(out, tiny_settings(), data_dir=shared_data)
    again.all()
    assert again.timings == {}
    assert (out / "sweeps" / "lora" / "results.jsonl").stat().st_mtime_ns == stamp
    shutil.rmtree(out)  # about 3 GB of float32 models; kept only when the test fails
