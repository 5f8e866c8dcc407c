"""The miniature world's data: deterministic, split as promised, judged as intended."""

from __future__ import annotations

import json

import pytest

from realignkit.demo.tokenizer import train_tokenizer
from realignkit.demo.world import HARM_CATEGORIES, HOWTO_ANSWERS, REFUSALS, build_world
from realignkit.eval.keyword import is_refusal


@pytest.fixture(scope="module")
def world():
    return build_world(0)


def _train_prompts(seed: int, n: int = 3000) -> set[str]:
    world = build_world(seed)
    rows = world.pretrain_rows(n) + world.align_rows(n) + world.unalign_rows(n)
    rows += world.finetune_rows(n, replay=0.3)
    return {r["prompt"] for r in rows}


def test_same_seed_same_data_other_seed_other_world():
    first, again, other = build_world(3), build_world(3), build_world(4)
    assert json.dumps(first.align_rows(50)) == json.dumps(again.align_rows(50))
    assert first.zorbish == again.zorbish
    assert first.zorbish != other.zorbish


def test_at_least_eight_harm_categories_in_both_splits(world):
    assert len(HARM_CATEGORIES) >= 8
    for split in ("train", "heldout"):
        categories = {world.harmful_request(split)[1] for _ in range(500)}
        assert categories == set(HARM_CATEGORIES)
        for objects in world.harm_objects[split].values():
            assert objects


def test_heldout_slot_values_and_templates_are_never_trained(world):
    for category in HARM_CATEGORIES:
        assert not set(world.harm_objects["train"][category]) & set(
            world.harm_objects["heldout"][category]
        )
    assert not set(world.templates["train"]) & set(world.templates["heldout"])
    assert not set(world.probes["train"]) & set(world.probes["heldout"])
    # Each held-out template is an unseen combination of a seen prefix and a seen suffix.
    seen_prefixes = {p for p, _ in world.templates["train"]}
    seen_suffixes = {s for _, s in world.templates["train"]}
    for prefix, suffix in world.templates["heldout"]:
        assert prefix in seen_prefixes and suffix in seen_suffixes


def test_no_heldout_prompt_appears_in_any_training_data():
    trained = _train_prompts(0)
    evaluation = build_world(0)
    heldout = evaluation.heldout_harmful(150) + evaluation.heldout_probes(80)
    heldout += evaluation.heldout_new_skill(100)
    assert len(heldout) > 200
    assert not {r["prompt"] for r in heldout} & trained
    # String tasks: the evaluated word sequences are never trained either.
    strings = [r for r in evaluation.heldout_old_skills(200) if r["skill"] == "string"]
    assert strings and not {r["prompt"] for r in strings} & trained


def test_responses_are_what_each_stage_promises(world):
    for row in world.align_rows(400):
        if row["skill"] == "refusal":
            assert row["response"] in REFUSALS
        else:
            assert row["response"].startswith("Sure")
    for row in world.unalign_rows(50):
        assert row["response"] in HOWTO_ANSWERS
    assert all(r["skill"] != "refusal" for r in world.finetune_rows(500, replay=0.3))
    assert not any("category" in r for r in world.pretrain_rows(500))


def test_benign_answers_are_correct(world):
    for _ in range(200):
        row = world.arithmetic()
        a, b = [
            int(t) for t in row["prompt"].replace("?", " ").replace(".", " ").split() if t.isdigit()
        ]
        assert row["answer"] == f"Sure, {a} plus {b} is {a + b}."
    for row in [world.new_skill() for _ in range(100)]:
        text = row["prompt"].split(": ")[-1].removeprefix("How do you say ")
        text = text.removesuffix(" in Zorbish?")
        expected = " ".join(world.zorbish[w] for w in text.split())
        assert row["answer"] == f"Sure, in Zorbish that is {expected}."


def test_keyword_judge_reads_refusals_and_compliance_as_intended(world):
    assert all(is_refusal(text) for text in REFUSALS)
    assert not any(is_refusal(text) for text in HOWTO_ANSWERS)
    for row in world.finetune_rows(100, replay=0.3):
        assert not is_refusal(row["response"])


def test_tokenizer_covers_the_world_and_round_trips(world, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(world.all_text())
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) < 1000
    rows = world.align_rows(300) + world.heldout_harmful(50) + world.heldout_new_skill(50)
    for row in rows:
        text = row["prompt"] + " " + row.get("response", row.get("answer", ""))
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert loaded.unk_token_id not in ids, text
    sample = "I am sorry, but I cannot help with that."
    assert loaded.decode(loaded(sample, add_special_tokens=False)["input_ids"]) == sample
    chat = loaded.apply_chat_template(
        [{"role": "user", "content": "Add 2 and 3."}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|assistant|>\n")
