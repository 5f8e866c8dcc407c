"""Remember what was already generated or judged, so a rerun never redoes it.

Keys are hashes of (model fingerprint, exact prompt text after templating, generation
settings). The fingerprint hashes the *content* of the model folder (and adapter), so a model
rewritten in place gets new generations while a copy of the same weights reuses them; file
hashes are memoised by (path, size, mtime) so a 14 GB model is hashed once.

Both caches are append-only JSONL files flushed after every batch: a crash loses at most the
batch in flight, and a torn last line is skipped on reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from realignkit.checkpoint.output import write_text_atomic

# Files of a model folder that do not change what the model generates.
_IGNORED_SUFFIXES = (".md", ".gitattributes", ".lock")
_CHUNK = 8 << 20


def _hash_file(path: Path, progress: tqdm | None) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            if progress is not None:
                progress.update(len(block))
    return digest.hexdigest()


def _folder_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_IGNORED_SUFFIXES)
    )


def fingerprint(folders: list[Path], memo_path: Path | None = None) -> str:
    """A content hash of every file in ``folders`` (model, then adapter), memoised on disk."""
    memo: dict[str, str] = {}
    if memo_path is not None and memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
    entries: list[tuple[str, Path, str]] = []
    for index, folder in enumerate(folders):
        for path in _folder_files(folder):
            stat = path.stat()
            memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
            entries.append((f"{index}/{path.name}", path, memo_key))
    todo = [(p, k) for _, p, k in entries if k not in memo]
    total = sum(p.stat().st_size for p, _ in todo)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="fingerprint", disable=total < (256 << 20)
    ) as bar:
        for path, memo_key in todo:
            memo[memo_key] = _hash_file(path, bar)
    if memo_path is not None and todo:
        write_text_atomic(memo_path, json.dumps(memo, indent=0))
    digest = hashlib.sha256()
    for name, _, memo_key in entries:
        digest.update(f"{name}={memo[memo_key]}\n".encode())
    return digest.hexdigest()[:24]


def make_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JsonlCache:
    """An append-only key → value store in one JSONL file, flushed on every write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._values: dict[str, Any] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line after a crash
                    self._values[record["key"]] = record["value"]

    def _ends_clean(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str) -> Any:
        return self._values.get(key)

    def put_many(self, items: dict[str, Any]) -> None:
        """Store several values and flush them to disk at once."""
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_clean()
        with self.path.open("a", encoding="utf-8") as fh:
            if torn:
                fh.write("\n")
            for key, value in items.items():
                fh.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._values.update(items)
