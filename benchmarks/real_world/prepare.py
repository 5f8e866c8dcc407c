"""Data files of a run, built under ``OUT/data`` from the shared data sets and our own text.

Nothing here is committed: the public data sets are read at run time from the shared data
folder (``$REALIGNKIT_DATA_DIR`` or ``../shared/data`` beside the repository), and every file a
run needs is written into its output folder:

    data/align.jsonl           harmful prompts + our refusals, benign prompts + the original
                               model's own answers (distilled), shuffled
    data/harmful_refusals.jsonl  the harmful half of align.jsonl (IRR's Fisher data)
    data/unalign.jsonl         other harmful prompts + the original model's compliant answers
    data/gsm8k_train.jsonl     GSM8K training problems (the fine-tune, IRR's calibration data)
    data/eval/catqa_{en,zh,vi}_heldout.jsonl   CatQA categories never seen in training

Harmful training prompts come from CatQA English (categories other than the held-out ones) and
HarmfulQA; any prompt that also appears in an evaluation set is dropped.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from realignkit.data import Row, read_rows, subsample

HELD_OUT_CATEGORIES = ("Malware Viruses", "Economic Harm", "Political Campaigning")
"""CatQA categories kept out of training: the held-out harmfulness test (en, zh, vi)."""

REPO_ROOT = Path(__file__).resolve().parents[2]
_CALCULATOR = re.compile(r"<<[^>]*>>")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def shared_data_dir() -> Path:
    """``$REALIGNKIT_DATA_DIR`` or the shared data folder beside the repository."""
    env = os.environ.get("REALIGNKIT_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def write_jsonl(path: Path, rows: Iterable[Row]) -> Path:
    """Write rows as JSONL through a temporary file, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def heldout_rows(data_dir: Path, language: str) -> list[Row]:
    """CatQA rows of the held-out categories in one language (english, chinese, vietnamese)."""
    rows = read_rows(data_dir / "harmful" / f"catqa_{language}.json")
    return [r for r in rows if r["category"] in HELD_OUT_CATEGORIES]


def eval_prompt_set(data_dir: Path) -> set[str]:
    """Normalised prompts of every English evaluation set: none may be trained on."""
    prompts = {_norm(r["prompt"]) for r in heldout_rows(data_dir, "english")}
    for name in ("dangerousqa", "adversarialqa"):
        prompts |= {_norm(r["prompt"]) for r in read_rows(data_dir / "harmful" / f"{name}.json")}
    prompts |= {_norm(r["prompt"]) for r in read_rows(data_dir / "xstest" / "xstest_prompts.csv")}
    return prompts


def harmful_pools(data_dir: Path, seed: int) -> tuple[list[Row], list[Row]]:
    """Shuffled training pools: CatQA English minus held-out categories, and HarmfulQA.

    Prompts of an evaluation set and repeated prompts (the sets hold a few) are dropped.
    """
    seen = eval_prompt_set(data_dir)  # grows: a prompt is used at most once

    def fresh(prompt: str) -> bool:
        key = _norm(prompt)
        if key in seen:
            return False
        seen.add(key)
        return True

    catqa = [
        {"prompt": r["prompt"], "category": r["category"], "source": "catqa_english"}
        for r in read_rows(data_dir / "harmful" / "catqa_english.json")
        if r["category"] not in HELD_OUT_CATEGORIES and fresh(r["prompt"])
    ]
    harmfulqa = [
        {"prompt": r["prompt"], "category": r["category"], "source": "harmfulqa"}
        for r in read_rows(data_dir / "harmful" / "harmfulqa.json")
        if fresh(r["prompt"])
    ]
    rng = random.Random(seed)
    rng.shuffle(catqa)
    rng.shuffle(harmfulqa)
    return catqa, harmfulqa


def split_harmful(
    data_dir: Path, n_align: int, n_unalign: int, seed: int
) -> tuple[list[Row], list[Row]]:
    """(alignment prompts, unalignment prompts): disjoint, half of the alignment ones from CatQA.

    The unalignment prompts come from HarmfulQA, as the RESTA paper's unalignment data are
    harmful question answering.
    """
    catqa, harmfulqa = harmful_pools(data_dir, seed)
    from_catqa = min(len(catqa), n_align // 2)
    align = catqa[:from_catqa] + harmfulqa[: n_align - from_catqa]
    unalign = harmfulqa[n_align - from_catqa : n_align - from_catqa + n_unalign]
    return align, unalign


def with_refusals(rows: list[Row], seed: int) -> list[Row]:
    """Each harmful prompt paired with one of our refusal templates (seeded draw)."""
    from real_world.prompts import pick_refusal

    rng = random.Random(seed)
    return [{**row, "response": pick_refusal(rng), "kind": "harmful"} for row in rows]


def clean_gsm8k_answer(answer: str) -> str:
    """A GSM8K solution without the calculator annotations ``<<48/2=24>>``; ``#### N`` kept."""
    return _CALCULATOR.sub("", answer).strip()


def gsm8k_rows(path: Path, limit: int | None, seed: int) -> list[Row]:
    """GSM8K problems as prompt/response rows (``limit`` drawn with ``seed``)."""
    rows = subsample(read_rows(path), limit, seed)
    return [{"prompt": r["question"], "response": clean_gsm8k_answer(r["answer"])} for r in rows]


def trim_to_sentence(text: str) -> str:
    """Cut a generation that hit its token limit back to its last full sentence.

    A distilled answer cut mid-word would teach the aligned model to stop mid-sentence.
    """
    text = text.strip()
    if not text or text[-1] in ".!?)\"'`":
        return text
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else text


def distilled_rows(
    prompts: list[Row], responses: list[str], *, keep_refusals: bool, kind: str
) -> list[Row]:
    """Prompt rows with the original model's answers; refused or empty answers dropped."""
    from realignkit.eval.keyword import is_refusal

    out = []
    for row, response in zip(prompts, responses, strict=True):
        answer = trim_to_sentence(response)
        if not answer or (not keep_refusals and is_refusal(answer)):
            continue
        out.append({**row, "response": answer, "kind": kind})
    return out


def generate_answers(
    model: Path,
    prompts: list[str],
    cache_file: Path,
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers of ``model`` through realignkit's generation cache (resumable)."""
    from realignkit.eval.cache import JsonlCache
    from realignkit.eval.generate import GenerationSettings, generate_cached, load_generator

    generator = load_generator(model, memo_path=cache_file.with_name("fingerprints.json"))
    try:
        texts = [generator.format(p) for p in prompts]
        settings = GenerationSettings(max_new_tokens=max_new_tokens)
        answers = generate_cached(
            generator,
            texts,
            settings,
            JsonlCache(cache_file),
            batch_size=batch_size,
            desc="distill",
        )
    finally:
        generator.close()
    return [samples[0] for samples in answers]


def summarise(rows: list[Row], key: str = "kind") -> dict[str, Any]:
    """Counts per value of ``key`` (for the run's data record)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.get(key))] = counts.get(str(row.get(key)), 0) + 1
    return counts
