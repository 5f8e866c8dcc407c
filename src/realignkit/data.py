"""Data files everywhere in realignkit: JSONL, JSON or CSV rows with named columns.

A JSON file may hold a list of objects, a list of strings (taken as prompts), or nested
objects of lists (CatQA and HarmfulQA style, ``{category: {sub-category: [question, ...]}}``),
which are flattened to rows with ``category`` and ``subcategory`` columns.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from realignkit.errors import RealignError

Row = dict[str, Any]


class _Located(dict):
    """A row that remembers where it was read (``"line 7"``, ``"item 3"``) for messages."""

    where: str = ""


def _located(row: Any, where: str, path: Path) -> _Located:
    if not isinstance(row, dict):
        raise RealignError(f"{path}, {where}: expected an object with named columns")
    located = _Located(row)
    located.where = where
    return located


def _read_jsonl(fh: Any, path: Path) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            rows.append(_located(json.loads(line), f"line {number}", path))
        except json.JSONDecodeError as err:
            raise RealignError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
    return rows


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8", newline="")


def _flatten_json(obj: Any, path: Path) -> list[Row]:
    if isinstance(obj, list):
        if all(isinstance(x, str) for x in obj):
            return [{"prompt": x} for x in obj]
        if all(isinstance(x, dict) for x in obj):
            return list(obj)
        raise RealignError(f"{path}: a JSON list must hold only objects or only strings")
    if isinstance(obj, dict):
        if all(isinstance(v, list) for v in obj.values()):
            return [{"prompt": q, "category": k} for k, qs in obj.items() for q in qs]
        if all(isinstance(v, dict) for v in obj.values()):
            return [
                {"prompt": q, "category": cat, "subcategory": sub}
                for cat, subs in obj.items()
                for sub, qs in subs.items()
                for q in qs
            ]
    raise RealignError(f"{path}: unsupported JSON layout (expected a list or nested lists)")


def read_rows(path: str | os.PathLike[str]) -> list[Row]:
    """All rows of a JSONL, JSON or CSV file (optionally gzipped), as dictionaries."""
    path = Path(path)
    if not path.is_file():
        raise RealignError(f"data file {str(path)!r} not found")
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    try:
        with _open_text(path) as fh:
            if kind == ".jsonl":
                rows = _read_jsonl(fh, path)
            elif kind == ".json":
                flat = _flatten_json(json.load(fh), path)
                rows = [_located(r, f"item {i}", path) for i, r in enumerate(flat, start=1)]
            elif kind in (".csv", ".tsv"):
                reader = csv.DictReader(fh, delimiter="\t" if kind == ".tsv" else ",")
                rows = [_located(r, f"line {reader.line_num}", path) for r in reader]
            else:
                raise RealignError(
                    f"{path}: unknown data format {kind!r}; use .jsonl, .json or .csv"
                )
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise RealignError(f"{path}: cannot parse ({type(err).__name__}: {err})") from err
    if not rows:
        raise RealignError(f"data file {str(path)!r} is empty")
    return rows


def require_columns(rows: Sequence[Row], columns: Sequence[str], source: str) -> None:
    """Every row has every one of ``columns`` with a value: checked for all rows before any
    long work, naming the file's line of the first bad row (and the columns there are)."""
    have = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in have]
    if missing:
        raise RealignError(
            f"{source}: no column {missing[0]!r}; columns are {', '.join(sorted(have))}"
        )
    for index, row in enumerate(rows, start=1):
        for column in columns:
            if row.get(column) is None:
                where = getattr(row, "where", "") or f"row {index}"
                raise RealignError(
                    f"{source}, {where}: no value in column {column!r} "
                    f"(columns there: {', '.join(sorted(row)) or 'none'})"
                )


def subsample(rows: list[Row], limit: int | None, seed: int = 0) -> list[Row]:
    """A fixed-seed random subset of ``limit`` rows, in their original order."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def read_prompts(
    path: str | os.PathLike[str],
    *,
    prompt_column: str = "prompt",
    response_column: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Row]:
    """Rows with a ``prompt`` key (and ``response`` when asked), other columns kept."""
    rows = read_rows(path)
    needed = [prompt_column] + ([response_column] if response_column else [])
    require_columns(rows, needed, str(path))
    out = []
    for row in rows:
        new = dict(row)
        new["prompt"] = row[prompt_column]
        if response_column:
            new["response"] = row[response_column]
        out.append(new)
    return subsample(out, limit, seed)
