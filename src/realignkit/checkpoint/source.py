"""Where a model lives: a local folder or a Hugging Face Hub id.

Every other module receives a local :class:`pathlib.Path` from :func:`resolve_model_dir`, so
hub access, offline handling and the messages about them live in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

from realignkit.errors import RealignError

# Files worth fetching from the hub for a weight edit: weights, their index, configs, tokenizer.
HUB_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.model",
    "*.txt",
    "*.tiktoken",
]
PICKLE_PATTERNS = ["*.bin", "*.bin.index.json"]


def looks_like_hub_id(name: str) -> bool:
    """`org/name` with no such local path is taken as a hub id."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_dir(
    name_or_path: str | os.PathLike[str],
    *,
    what: str = "model",
    allow_pickle: bool = False,
    revision: str | None = None,
) -> Path:
    """Return a local folder for a model folder path or a hub id.

    A hub id is downloaded (or taken from the cache) with ``huggingface_hub``; when the hub
    cannot be reached, the error says so and how to work offline.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RealignError(f"{what} {str(path)!r} is a file; give the folder that holds it")
        return path.resolve()
    name = str(name_or_path)
    if not looks_like_hub_id(name):
        raise RealignError(f"{what} {name!r} not found: no such folder, and not a hub id")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise RealignError(f"{what} {name!r}: huggingface_hub is not installed") from err
    patterns = HUB_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        kind = type(err).__name__
        raise RealignError(
            f"{what} {name!r} is not a local folder and could not be fetched from the Hugging Face "
            f"Hub ({kind}); check the name, your network and HF_TOKEN, or pass a local folder"
        ) from err
