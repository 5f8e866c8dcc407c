"""Benchmark loaders on the real files of the shared data folder, and bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from realignkit.errors import RealignError
from realignkit.eval.benchmarks import LoadOptions, load_benchmark, load_benchmarks, split_specs


def _load(spec, shared_data, role="safety", **kw):
    return load_benchmark(spec, role, LoadOptions(data_dir=shared_data, **kw))


@pytest.mark.parametrize("language", ["english", "chinese", "vietnamese"])
def test_catqa_keeps_category_and_subcategory(shared_data, language):
    bench = _load(f"catqa_{language}", shared_data)
    assert bench.kind == "harmful" and len(bench.rows) == 550
    categories = Counter(r["category"] for r in bench.rows)
    assert len(categories) == 11 and set(categories.values()) == {50}
    subcategories = {(r["category"], r["subcategory"]) for r in bench.rows}
    assert len(subcategories) == 55
    assert all(r["prompt"].strip() for r in bench.rows)


def test_catqa_aliases(shared_data):
    assert _load("catqa_zh", shared_data).rows == _load("catqa_chinese", shared_data).rows
    assert _load("catqa", shared_data).source.endswith("catqa_english.json")


@pytest.mark.parametrize(
    ("name", "count"), [("harmfulqa", 1960), ("dangerousqa", 200), ("adversarialqa", 500)]
)
def test_other_harmful_sets(shared_data, name, count):
    bench = _load(name, shared_data)
    assert (bench.kind, len(bench.rows)) == ("harmful", count)


def test_xstest_halves(shared_data):
    both = _load("xstest", shared_data)
    assert both.kind == "xstest" and len(both.rows) == 450
    assert Counter(r["label"] for r in both.rows) == {"safe": 250, "unsafe": 200}
    assert {r["category"] for r in both.rows} >= {"homonyms", "contrast_homonyms"}
    safe, unsafe = _load("xstest_safe", shared_data), _load("xstest_unsafe", shared_data)
    assert (safe.kind, len(safe.rows)) == ("benign", 250)
    assert (unsafe.kind, len(unsafe.rows)) == ("harmful", 200)


def test_gsm8k_and_humaneval(shared_data):
    gsm = _load("gsm8k", shared_data, role="utility")
    assert len(gsm.rows) == 1319 and gsm.rows[0]["reference"] == "18"
    assert gsm.rows[0]["prompt"].startswith("Janet")
    he = _load("humaneval", shared_data, role="utility")
    assert len(he.rows) == 164 and he.rows[0]["entry_point"] == "has_close_elements"


def test_limit_is_a_fixed_seed_subset(shared_data):
    first = _load("catqa_english", shared_data, limit=20, seed=1)
    again = _load("catqa_english", shared_data, limit=20, seed=1)
    other = _load("catqa_english", shared_data, limit=20, seed=2)
    assert len(first.rows) == 20 and first.rows == again.rows and first.rows != other.rows


def test_generic_files_with_a_prompt_column(tmp_path, shared_data):
    completions = shared_data / "xstest" / "xstest_v2_completions_mistralinstruct.csv"
    bench = _load(f"benign:{completions}", shared_data)
    assert bench.kind == "benign" and len(bench.rows) == 450
    path = tmp_path / "advbench.jsonl"
    path.write_text("".join(json.dumps({"goal": f"do bad thing {i}"}) + "\n" for i in range(5)))
    bench = _load(str(path), shared_data, prompt_column="goal")  # no kind: harmful
    assert bench.kind == "harmful" and bench.rows[0]["prompt"] == "do bad thing 0"
    qa = tmp_path / "qa.csv"
    qa.write_text("question,gold\nWhat is 2+2?,4\n")
    bench = _load(
        f"qa:{qa}", shared_data, role="utility", prompt_column="question", answer_column="gold"
    )
    assert bench.rows[0]["reference"] == "4"


def test_bad_input_is_a_one_line_error(tmp_path, shared_data):
    with pytest.raises(RealignError, match="unknown benchmark 'catqa_englsh'"):
        _load("catqa_englsh", shared_data)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(RealignError, match="no column 'prompt'; columns are question"):
        _load(f"harmful:{data}", shared_data)
    with pytest.raises(RealignError, match="no column 'answer'"):
        _load(f"qa:{data}", shared_data, role="utility", prompt_column="question")
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt\n")
    with pytest.raises(RealignError, match="empty"):
        _load(f"benign:{empty}", shared_data)
    with pytest.raises(RealignError, match="not found"):
        _load(f"harmful:{tmp_path / 'missing.jsonl'}", shared_data)
    with pytest.raises(RealignError, match="needs harmful/catqa_english.json"):
        load_benchmark("catqa_english", "safety", LoadOptions(data_dir=tmp_path))
    with pytest.raises(RealignError, match="listed twice"):
        load_benchmarks(["xstest", "xstest"], [], LoadOptions(data_dir=shared_data))


def test_hub_data_sets_fail_clearly_offline(monkeypatch, shared_data):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RealignError, match="hub data set 'walledai/AdvBench@train' could not"):
        _load("harmful:hf:walledai/AdvBench@train", shared_data)


def test_hub_data_sets_load_through_datasets(monkeypatch, shared_data):
    import datasets

    seen = {}

    def fake(name, config=None, split=None):
        seen.update(name=name, config=config, split=split)
        return datasets.Dataset.from_list([{"prompt": "p1"}, {"prompt": "p2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    bench = _load("benign:hf:org/set:cfg@test", shared_data)
    assert [r["prompt"] for r in bench.rows] == ["p1", "p2"]
    assert seen == {"name": "org/set", "config": "cfg", "split": "test"}


def test_split_specs():
    assert split_specs("a, b,c") == ["a", "b", "c"]
    assert split_specs(["a,b", "c"]) == ["a", "b", "c"]
    assert split_specs(None) == []
