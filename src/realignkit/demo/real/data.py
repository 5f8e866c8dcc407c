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

import os
import random
import re
from pathlib import Path
from typing import Any

from realignkit.data import Row, read_rows, subsample

HELD_OUT_CATEGORIES = ("Malware Viruses", "Economic Harm", "Political Campaigning")
"""CatQA categories kept out of training: the held-out harmfulness test (en, zh, vi)."""

REPO_ROOT = Path(__file__).resolve().parents[4]
_CALCULATOR = re.compile(r"<<[^>]*>>")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def shared_data_dir() -> Path:
    """``$REALIGNKIT_DATA_DIR``, else ``./data``, ``../shared/data`` or the shared data folder
    beside the repository: the first that holds CatQA."""
    env = os.environ.get("REALIGNKIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cwd = Path.cwd()
    candidates = [
        cwd / "data",
        cwd.parent / "shared" / "data",
        REPO_ROOT.parent / "shared" / "data",
    ]
    for folder in candidates:
        if (folder / "harmful" / "catqa_english.json").is_file():
            return folder
    from realignkit.errors import RealignError

    raise RealignError(
        "the real world needs the shared data folder (CatQA, XSTest, GSM8K): set "
        "REALIGNKIT_DATA_DIR or pass --data-dir"
    )


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def heldout_rows(data_dir: Path, language: str) -> list[Row]:
    """CatQA rows of the held-out categories in one language (english, chinese, vietnamese)."""
    rows = read_rows(data_dir / "harmful" / f"catqa_{language}.json")
    return [r for r in rows if r["category"] in HELD_OUT_CATEGORIES]


def test_rows(data_dir: Path, sizes: dict[str, int | None], seed: int) -> dict[str, list[Row]]:
    """The test prompts of a run: a seeded subsample of each set (``None``: all, 0: none).

    ``catqa_{en,zh}_heldout`` are the CatQA categories never trained on; ``xstest_safe`` the
    250 safe XSTest prompts (their XSTest type as the category).
    """
    from realignkit.data import subsample

    def harmful(name: str) -> list[Row]:
        return [
            {"prompt": r["prompt"], "source": name}
            for r in read_rows(data_dir / "harmful" / f"{name}.json")
        ]

    sources = {
        "catqa_en_heldout": lambda: [
            {**r, "source": "catqa_english"} for r in heldout_rows(data_dir, "english")
        ],
        "catqa_zh_heldout": lambda: [
            {**r, "source": "catqa_chinese"} for r in heldout_rows(data_dir, "chinese")
        ],
        "dangerousqa": lambda: harmful("dangerousqa"),
        "adversarialqa": lambda: harmful("adversarialqa"),
        "xstest_safe": lambda: [
            {"prompt": r["prompt"], "category": r["type"], "source": "xstest"}
            for r in read_rows(data_dir / "xstest" / "xstest_prompts.csv")
            if r["label"] == "safe"
        ],
    }
    unknown = sorted(set(sizes) - set(sources))
    if unknown:
        raise ValueError(f"unknown test sets {unknown}; known: {sorted(sources)}")
    return {
        name: subsample(sources[name](), size, seed) for name, size in sizes.items() if size != 0
    }


def eval_prompt_set(data_dir: Path) -> set[str]:
    """Normalised prompts of every English evaluation set: none may be trained on."""
    prompts = {_norm(r["prompt"]) for r in heldout_rows(data_dir, "english")}
    for name in ("dangerousqa", "adversarialqa"):
        prompts |= {_norm(r["prompt"]) for r in read_rows(data_dir / "harmful" / f"{name}.json")}
    prompts |= {_norm(r["prompt"]) for r in read_rows(data_dir / "xstest" / "xstest_prompts.csv")}
    return prompts


def harmful_pools(data_dir: Path, seed: int) -> dict[str, list[Row]]:
    """Shuffled training pools: CatQA English minus held-out categories, HarmfulQA, and the
    harmful requests written for this project (``written``; each row carries its ``harm``).

    Prompts of an evaluation set and repeated prompts (the sets hold a few) are dropped.
    """
    from realignkit.demo.real.prompts import written_harmful_prompts

    seen = eval_prompt_set(data_dir)  # grows: a prompt is used at most once

    def fresh(prompt: str) -> bool:
        key = _norm(prompt)
        if key in seen:
            return False
        seen.add(key)
        return True

    pools = {
        "catqa": [
            {"prompt": r["prompt"], "category": r["category"], "source": "catqa_english"}
            for r in read_rows(data_dir / "harmful" / "catqa_english.json")
            if r["category"] not in HELD_OUT_CATEGORIES and fresh(r["prompt"])
        ],
        "harmfulqa": [
            {"prompt": r["prompt"], "category": r["category"], "source": "harmfulqa"}
            for r in read_rows(data_dir / "harmful" / "harmfulqa.json")
            if fresh(r["prompt"])
        ],
        "written": [
            {"prompt": prompt, "category": harm, "source": "written"}
            for prompt, harm in written_harmful_prompts()
            if fresh(prompt)
        ],
    }
    rng = random.Random(seed)
    for rows in pools.values():
        rng.shuffle(rows)
    return pools


def split_harmful(
    data_dir: Path, n_align: int, n_unalign: int, n_validation: int, seed: int
) -> tuple[list[Row], list[Row], list[Row]]:
    """(alignment, unalignment, validation) harmful prompts, pairwise disjoint.

    Alignment and validation each take half from CatQA (training categories) and half from
    the written requests; the written ones are split by harm, so a validation request never
    asks for a harm seen in training. HarmfulQA is not used for alignment: many of its
    "harmful" questions are benign ("How can I graph a linear equation without knowing its
    slope?"), and refusing them taught the first recipe to refuse benign questions. The
    unalignment prompts come from HarmfulQA, as the RESTA paper's unalignment data are
    harmful question answering (benign ones among them do no harm there).
    """
    pools = harmful_pools(data_dir, seed)
    harms = sorted({r["category"] for r in pools["written"]})
    random.Random(seed).shuffle(harms)
    validation_harms = set(harms[: max(1, len(harms) // 4)])
    written_train = [r for r in pools["written"] if r["category"] not in validation_harms]
    written_val = [r for r in pools["written"] if r["category"] in validation_harms]
    half, val_half = n_align // 2, n_validation // 2
    catqa = pools["catqa"]
    align = catqa[:half] + written_train[: n_align - half]
    validation = catqa[half : half + val_half] + written_val[: n_validation - val_half]
    unalign = pools["harmfulqa"][:n_unalign]
    return align, unalign, validation


def split_benign(
    seed: int,
    n_validation: int,
    n_train: int | None = None,
    data_dir: Path | None = None,
) -> tuple[list[Row], list[Row]]:
    """(alignment, validation) benign prompts: everyday requests and ones that look unsafe.

    The validation split holds ``n_validation`` of each kind, never trained on; the alignment
    split the rest (at most ``n_train`` of each kind). With ``data_dir``, a written prompt that
    happens to be an evaluation prompt too (XSTest's wording is everyday English) is dropped.
    """
    from realignkit.demo.real.prompts import benign_prompts, looks_unsafe_prompts

    banned = eval_prompt_set(data_dir) if data_dir is not None else set()
    rng = random.Random(seed)
    train: list[Row] = []
    validation: list[Row] = []
    for kind, prompts in (("everyday", benign_prompts()), ("looks_unsafe", looks_unsafe_prompts())):
        rows = [
            {"prompt": p, "source": "written", "category": kind}
            for p in prompts
            if _norm(p) not in banned
        ]
        rng.shuffle(rows)
        validation += rows[:n_validation]
        rest = rows[n_validation:]
        train += rest[:n_train] if n_train is not None else rest
    return train, validation


def with_refusals(rows: list[Row], seed: int) -> list[Row]:
    """Each harmful prompt paired with one of our refusal templates (seeded draw)."""
    from realignkit.demo.real.prompts import pick_refusal

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
