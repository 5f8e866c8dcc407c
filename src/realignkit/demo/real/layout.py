"""Where everything of a real-world run lives: the one map that the stages (:mod:`.pipeline`)
write by and the report (:mod:`.report`) reads by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Layout:
    """Where everything of a run lives."""

    out: Path

    def model(self, name: str) -> Path:
        return self.out / "models" / name

    def data(self, name: str) -> Path:
        return self.out / "data" / name

    def report(self, name: str) -> Path:
        return self.out / "reports" / name

    def sweep(self, name: str) -> Path:
        return self.out / "sweeps" / name

    @property
    def manifest(self) -> Path:
        return self.data("manifest.json")


def finetune_name(kind: str, seed: int) -> str:
    """``ft-full`` for seed 0 (the demo's only seed), ``ft-full-s1`` for the others."""
    return f"ft-{kind}" if seed == 0 else f"ft-{kind}-s{seed}"
