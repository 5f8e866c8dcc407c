"""Small helpers shared by the tests: run the CLI in-process, fingerprint folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def run_cli(args: list[str]) -> int:
    """Run ``realignkit ARGS`` in this process; return its exit code."""
    from realignkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def folder_digest(folder: Path) -> str:
    """A hash of every file's name and bytes under ``folder`` (to prove inputs are untouched)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def load_folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (sharded) safetensors folder, in memory (tests only: tiny models)."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def assert_one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    """The CLI failed with exit 2 and one line on stderr that mentions every needle."""
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error:")]
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert len(lines) == 1, err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
