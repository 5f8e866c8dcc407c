"""Fingerprints of inputs, for the metadata every output carries.

A model's fingerprint hashes each weight file's name, size and safetensors header, plus 16
evenly spaced 64 KiB samples of its bytes: two fine-tunes of one model share names, shapes and
sizes, but training moves every tensor, so the samples tell them apart. Hashing every byte
would read a 7B model a second time; this reads about 1 MiB per file. A small file (data set,
adapter config) is hashed whole.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SAMPLES = 16
SAMPLE_BYTES = 64 * 1024
WHOLE_FILE_BYTES = 4 * SAMPLES * SAMPLE_BYTES
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def file_fingerprint(path: Path) -> str:
    """sha256 of a whole small file, or of its size, head and evenly spaced samples."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}\x00{size}\x00".encode())
    with path.open("rb") as fh:
        if size <= WHOLE_FILE_BYTES:
            h.update(fh.read())
        else:
            head = fh.read(8)
            header_len = int.from_bytes(head, "little") if path.suffix == ".safetensors" else 0
            h.update(head + fh.read(min(header_len, size - 8)))
            for i in range(SAMPLES):
                fh.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> str:
    """``sha256:…`` of a file, or of a folder's weight files and config (names sorted)."""
    target = Path(path)
    if target.is_file():
        return "sha256:" + file_fingerprint(target)
    h = hashlib.sha256()
    files = sorted(
        p
        for p in target.iterdir()
        if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name.endswith("config.json"))
    )
    for file in files:
        h.update(file_fingerprint(file).encode())
    return "sha256:" + h.hexdigest()


def source_fingerprint(source: str | os.PathLike[str]) -> str:
    """The fingerprint of a local file or folder, else the name as given (a hub id): what a
    cache of derived inputs (Fisher scores, a safety vector) is keyed by."""
    path = Path(source).expanduser()
    return fingerprint(path) if path.exists() else str(source)
