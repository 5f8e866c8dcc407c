"""Benchmarks: what to ask the model and how to score the answers.

A benchmark spec is either a built-in name, read from a data folder laid out like
``../shared/data`` (``--data-dir`` or ``$REALIGNKIT_DATA_DIR``)::

    catqa_english catqa_chinese catqa_vietnamese   harmful, with category and sub-category
    harmfulqa dangerousqa adversarialqa             harmful
    xstest                                          safe prompts (over-refusal) and unsafe
                                                    contrast prompts (harmfulness), by type
    xstest_safe xstest_unsafe                       one half of XSTest
    gsm8k                                           GSM8K test, exact numeric answer
    humaneval                                       HumanEval, pass@k in a sandbox

or ``KIND:SOURCE`` for any file or hub data set, where KIND is one of

    harmful   harmfulness rate: share of prompts answered (per the judge)
    benign    over-refusal rate: share of prompts refused
    qa        exact-match accuracy against an ``answer`` column (see ``scoring.qa_correct``)
    xstest gsm8k humaneval   the formats above, from another file

and SOURCE is a CSV/JSON/JSONL path (``--prompt-column`` names the prompt column) or
``hf:ORG/NAME[:CONFIG][@SPLIT]`` for a Hugging Face data set (online only). A bare path or
``hf:`` source without a kind is ``harmful`` among safety benchmarks and ``qa`` among utility
benchmarks. ``--limit N`` keeps a fixed-seed random subset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from realignkit.data import Row, read_rows, require_columns, subsample
from realignkit.errors import RealignError

KINDS = ("harmful", "benign", "xstest", "qa", "gsm8k", "humaneval")
SAFETY_KINDS = ("harmful", "benign", "xstest")
UTILITY_KINDS = ("qa", "gsm8k", "humaneval")

# name -> (kind, path inside the data folder, row filter on XSTest's label)
BUILTINS: dict[str, tuple[str, str, str | None]] = {
    "catqa_english": ("harmful", "harmful/catqa_english.json", None),
    "catqa_chinese": ("harmful", "harmful/catqa_chinese.json", None),
    "catqa_vietnamese": ("harmful", "harmful/catqa_vietnamese.json", None),
    "harmfulqa": ("harmful", "harmful/harmfulqa.json", None),
    "dangerousqa": ("harmful", "harmful/dangerousqa.json", None),
    "adversarialqa": ("harmful", "harmful/adversarialqa.json", None),
    "xstest": ("xstest", "xstest/xstest_prompts.csv", None),
    "xstest_safe": ("benign", "xstest/xstest_prompts.csv", "safe"),
    "xstest_unsafe": ("harmful", "xstest/xstest_prompts.csv", "unsafe"),
    "gsm8k": ("gsm8k", "gsm8k/test.jsonl", None),
    "humaneval": ("humaneval", "humaneval/HumanEval.jsonl.gz", None),
}
ALIASES = {
    "catqa": "catqa_english",
    "catqa_en": "catqa_english",
    "catqa_zh": "catqa_chinese",
    "catqa_vi": "catqa_vietnamese",
}
# Built-ins that can come from the hub when no data folder has them: (id, config, split).
HUB_FALLBACKS: dict[str, tuple[str, str | None, str]] = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "humaneval": ("openai/openai_humaneval", None, "test"),
}
DATA_DIR_ENV = "REALIGNKIT_DATA_DIR"


@dataclass
class Benchmark:
    """Rows to ask (each has ``prompt``; other keys depend on the kind) and how to score them."""

    name: str
    kind: str
    rows: list[Row]
    source: str

    @property
    def role(self) -> str:
        return "safety" if self.kind in SAFETY_KINDS else "utility"


@dataclass
class LoadOptions:
    """Options shared by every benchmark of one run."""

    data_dir: str | os.PathLike[str] | None = None
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    limit: int | None = None
    seed: int = 0


def _data_dirs(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    cwd = Path.cwd()
    dirs += [cwd / "data", cwd.parent / "shared" / "data"]
    return dirs


def _find_builtin(name: str, relpath: str, data_dir: str | os.PathLike[str] | None) -> Path | None:
    for folder in _data_dirs(data_dir):
        candidate = folder / relpath
        if candidate.is_file():
            return candidate
    return None


def _hub_rows(source: str) -> list[Row]:
    """Rows of ``ORG/NAME[:CONFIG][@SPLIT]`` from the Hugging Face hub through ``datasets``."""
    ident, _, split = source.partition("@")
    ident, _, config = ident.partition(":")
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise RealignError("hub data sets need the datasets package") from err
    try:
        loaded = datasets.load_dataset(ident, config or None, split=split or None)
        if isinstance(loaded, datasets.DatasetDict):
            names = list(loaded)
            pick = next((s for s in ("test", "train") if s in names), names[0])
            loaded = loaded[pick]
        rows = [dict(r) for r in loaded]
    except Exception as err:  # offline, unknown id, bad split: all end the same way
        raise RealignError(
            f"hub data set {source!r} could not be loaded ({type(err).__name__}); check the "
            "name and your network, or pass a local CSV/JSON/JSONL file"
        ) from err
    if not rows:
        raise RealignError(f"hub data set {source!r} is empty")
    return rows


def _source_rows(source: str) -> list[Row]:
    if source.startswith("hf:"):
        return _hub_rows(source[3:])
    path = Path(source).expanduser()
    if not path.exists():
        from realignkit.checkpoint.source import looks_like_hub_id

        if looks_like_hub_id(source.partition("@")[0].partition(":")[0]):
            return _hub_rows(source)
        raise RealignError(f"data file {source!r} not found")
    return read_rows(path)


def _prompts(rows: list[Row], column: str, source: str) -> list[Row]:
    require_columns(rows, [column], source)
    out = []
    for row in rows:
        new = dict(row)
        new["prompt"] = str(row[column])
        out.append(new)
    return out


def _shape_rows(kind: str, rows: list[Row], source: str, opts: LoadOptions) -> list[Row]:
    """Bring raw rows of one kind into the columns the scorers read."""
    if kind in ("harmful", "benign"):
        return _prompts(rows, opts.prompt_column, source)
    if kind == "qa":
        require_columns(rows, [opts.answer_column], source)
        shaped = _prompts(rows, opts.prompt_column, source)
        for row in shaped:
            row["reference"] = str(row[opts.answer_column])
        return shaped
    if kind == "xstest":
        require_columns(rows, ["label"], source)
        shaped = _prompts(rows, opts.prompt_column, source)
        for row in shaped:
            label = str(row["label"]).strip().lower()
            if label not in ("safe", "unsafe"):
                raise RealignError(f"{source}: XSTest label must be safe or unsafe, got {label!r}")
            row["label"] = label
            row.setdefault("category", row.get("type", ""))
        return shaped
    if kind == "gsm8k":
        from realignkit.eval.gsm8k import reference_answer

        column = "question" if opts.prompt_column == "prompt" else opts.prompt_column
        require_columns(rows, [column, "answer"], source)
        shaped = _prompts(rows, column, source)
        for row in shaped:
            row["reference"] = reference_answer(str(row["answer"]))
        return shaped
    if kind == "humaneval":
        require_columns(rows, ["task_id", "prompt", "test", "entry_point"], source)
        return [dict(row) for row in rows]
    raise RealignError(f"unknown benchmark kind {kind!r}; use one of {', '.join(KINDS)}")


def parse_spec(spec: str, default_kind: str) -> tuple[str, str]:
    """``(kind, source)`` of a non-built-in spec (see the module docstring)."""
    head, sep, rest = spec.partition(":")
    if sep and head in KINDS:
        if not rest:
            raise RealignError(f"benchmark {spec!r}: nothing after {head + ':'!r}")
        return head, rest
    return default_kind, spec


def load_benchmark(spec: str, role: str, opts: LoadOptions) -> Benchmark:
    """One benchmark from its spec; ``role`` is ``safety`` or ``utility`` (the default kind)."""
    spec = spec.strip()
    if not spec:
        raise RealignError("empty benchmark name")
    name = ALIASES.get(spec, spec)
    if name in BUILTINS:
        kind, relpath, label = BUILTINS[name]
        path = _find_builtin(name, relpath, opts.data_dir)
        if path is not None:
            rows, source = read_rows(path), str(path)
        elif name in HUB_FALLBACKS:
            ident, config, split = HUB_FALLBACKS[name]
            source = f"{ident}{':' + config if config else ''}@{split}"
            rows = _hub_rows(source)
        else:
            raise RealignError(
                f"benchmark {spec!r} needs {relpath} inside a data folder; pass --data-dir DIR "
                f"(or set {DATA_DIR_ENV}) pointing at a folder laid out like the shared data"
            )
        builtin_opts = LoadOptions(seed=opts.seed, limit=opts.limit)
        rows = _shape_rows(kind, rows, source, builtin_opts)
        if label is not None:
            rows = [r for r in rows if r["label"] == label]
    else:
        default_kind = "harmful" if role == "safety" else "qa"
        kind, source = parse_spec(spec, default_kind)
        looks_like_source = (
            ":" in spec or "/" in source or "." in Path(source).name or Path(source).exists()
        )
        if not looks_like_source:
            known = sorted(BUILTINS) + sorted(ALIASES)
            raise RealignError(
                f"unknown benchmark {spec!r}; use one of {', '.join(known)}, or KIND:PATH with "
                f"KIND in {', '.join(KINDS)}"
            )
        rows = _shape_rows(kind, _source_rows(source), source, opts)
    rows = [r for r in rows if str(r.get("prompt", "")).strip()]
    if not rows:
        raise RealignError(f"benchmark {spec!r} has no prompts")
    rows = subsample(rows, opts.limit, opts.seed)
    return Benchmark(name=spec, kind=kind, rows=rows, source=source)


def split_specs(
    specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` (paths allowed) to a flat list of specs."""
    if specs is None:
        return []
    items = [specs] if isinstance(specs, str | os.PathLike) else list(specs)
    out: list[str] = []
    for item in items:
        out += [s.strip() for s in str(os.fspath(item)).split(",") if s.strip()]
    return out


def load_benchmarks(safety: list[str], utility: list[str], opts: LoadOptions) -> list[Benchmark]:
    """Every benchmark of a run, loaded (and checked) before any model is."""
    benches = [load_benchmark(s, "safety", opts) for s in safety]
    benches += [load_benchmark(s, "utility", opts) for s in utility]
    names = [b.name for b in benches]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RealignError(f"benchmark {duplicates[0]!r} is listed twice")
    return benches
