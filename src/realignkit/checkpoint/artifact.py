"""Folders of tensors that are not models: safety vectors and Fisher scores.

Each is safetensors shards plus one JSON index whose ``format`` names the kind and whose
``tensors`` lists every tensor. Methods read them one tensor at a time through the interface
they share with models (:class:`TensorSource`: checkpoints, fine-tuned weights, artifacts),
so layout checks (:func:`~realignkit.checkpoint.finetuned.check_same_layout`) and the executor
treat them alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from realignkit.checkpoint.reader import CheckpointReader
from realignkit.errors import RealignError

PathLike = str | os.PathLike[str]

SAFETY_VECTOR_FILE = "safety_vector.json"
SAFETY_VECTOR_FORMAT = "realignkit-safety-vector"
LEFT, RIGHT = "::left", "::right"  # the factors of a low-rank tensor: v = left @ right
FISHER_FILE = "fisher.json"
FISHER_FORMAT = "realignkit-fisher"


@runtime_checkable
class TensorSource(Protocol):
    """Named tensors read one at a time: what every input of a method offers."""

    dir: Path
    names: list[str]
    what: str

    @property
    def architecture(self) -> str: ...

    def __contains__(self, name: object) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


class ArtifactFolder:
    """An artifact folder (see the module docstring), opened and checked against its index.

    Subclasses name their index file, format, what they are and the command that makes them.
    """

    index_file: ClassVar[str]
    format: ClassVar[str]
    what: ClassVar[str]
    kind: ClassVar[str]  # "a safety vector folder"
    not_format: ClassVar[str]  # "not a realignkit safety vector"
    made_by: ClassVar[str]  # "`realignkit safety-vector`"

    def __init__(self, path: PathLike) -> None:
        folder = Path(path).expanduser()
        index = folder / self.index_file
        if not index.is_file():
            raise RealignError(
                f"{str(folder)!r} is not {self.kind} (no {self.index_file}); "
                f"make one with {self.made_by}"
            )
        self.meta: dict[str, Any] = json.loads(index.read_text())
        if self.meta.get("format") != self.format:
            raise RealignError(f"{index}: {self.not_format}")
        self.dir = folder
        self._reader = CheckpointReader(folder, what=self.what)
        self._tensors: dict[str, Any] = self.meta["tensors"]
        for name, entry in self._tensors.items():  # the files hold what the index lists
            for key in self._stored_keys(name, entry):
                if key not in self._reader:
                    raise RealignError(
                        f"tensor {key!r} of the {self.what} is missing from "
                        f"{self._reader.location!r} ({self.index_file} lists it): the folder "
                        "is damaged"
                    )
        self.names: list[str] = list(self._tensors)

    def _stored_keys(self, name: str, entry: Any) -> tuple[str, ...]:
        return (name,)

    def _shape_of(self, entry: Any) -> list[int]:
        return list(entry)

    def _missing(self, name: str) -> str:
        return f"tensor {name!r} is missing from the {self.what} {self.dir}"

    @property
    def architecture(self) -> str:
        return str(self.meta.get("architecture", "unknown"))

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._tensors:
            raise RealignError(self._missing(name))
        return tuple(self._shape_of(self._tensors[name]))

    def get(self, name: str) -> torch.Tensor:
        self.shape(name)  # one-line error when missing
        return self._reader.get(name)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafetyVector(ArtifactFolder):
    """A safety-vector folder, read one tensor at a time (dense, or expanded from low rank)."""

    index_file = SAFETY_VECTOR_FILE
    format = SAFETY_VECTOR_FORMAT
    what = "safety vector"
    kind = "a safety vector folder"
    not_format = "not a realignkit safety vector"
    made_by = "`realignkit safety-vector`"

    def __init__(self, path: PathLike) -> None:
        super().__init__(path)
        self.config = {
            "architectures": [self.meta.get("architecture", "unknown")],
            "vocab_size": self.meta.get("vocab_size"),
        }

    def _stored_keys(self, name: str, entry: Any) -> tuple[str, ...]:
        return (name + LEFT, name + RIGHT) if entry.get("lowrank") else (name,)

    def _shape_of(self, entry: Any) -> list[int]:
        return entry["shape"]

    @property
    def is_lowrank(self) -> bool:
        return self.meta.get("form") == "lowrank"

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """``(left, right, transpose)`` with ``v = left @ right`` (transposed), or None if dense."""
        entry = self._tensors.get(name)
        if not entry or not entry.get("lowrank"):
            return None
        left, right = self._reader.get(name + LEFT), self._reader.get(name + RIGHT)
        return left, right, bool(entry.get("transpose"))

    def get(self, name: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """The dense ``v`` of one tensor, in ``dtype`` (None: as stored; low rank: float32)."""
        lowrank = self.factors(name)
        if lowrank is None:
            v = super().get(name)
            return v if dtype is None else v.to(dtype)
        left, right, transpose = lowrank
        dtype = dtype or torch.float32
        v = left.to(dtype) @ right.to(dtype)
        return v.T.contiguous() if transpose else v


class FisherScores(ArtifactFolder):
    """A folder of diagonal Fisher scores (``realignkit fisher``), read as float32."""

    index_file = FISHER_FILE
    format = FISHER_FORMAT
    what = "Fisher scores"
    kind = "a Fisher folder"
    not_format = "not realignkit Fisher scores"
    made_by = "`realignkit fisher`"

    def _missing(self, name: str) -> str:
        return f"tensor {name!r} has no Fisher scores in {self.dir}"

    def get(self, name: str) -> torch.Tensor:
        return super().get(name).float()
