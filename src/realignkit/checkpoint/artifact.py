"""Folders of tensors that are not models: safety vectors and Fisher scores.

Each is safetensors shards plus one JSON index whose ``format`` names the kind and whose
``tensors`` lists every tensor, and the card and ``realignkit.json`` every output carries.
Methods read them one tensor at a time through the interface they share with models
(:class:`TensorSource`: checkpoints, fine-tuned weights, artifacts), so layout checks
(:func:`~realignkit.checkpoint.finetuned.check_same_layout`) and the executor treat them
alike; :meth:`ArtifactFolder.write` is the one way they are written (through the shard
writer's streaming loop, :meth:`~realignkit.checkpoint.writer.CheckpointWriter.stream`, the
executor's too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from realignkit._version import __version__
from realignkit.checkpoint.card import described, write_documents
from realignkit.checkpoint.reader import CheckpointReader
from realignkit.checkpoint.writer import CheckpointWriter
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
    # what realignkit.json and the card say: the maker's name, a summary, and which fields
    # of the index are the parameters it was made with
    maker: ClassVar[str]  # "safety-vector"
    summary: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]]

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

    @classmethod
    def write(
        cls,
        writer: CheckpointWriter,
        produce: Callable[[Any], tuple[Mapping[str, torch.Tensor], Any]],
        names: Sequence[str],
        *,
        meta: Mapping[str, Any],
        inputs: Mapping[str, Any],
        workers: int = 1,
        desc: str | None = None,
        weights: Callable[[str], int] | None = None,
        files: Mapping[str, str] | None = None,
        load: Callable[[str], Any] | None = None,
    ) -> dict[str, Any]:
        """Write one artifact folder through ``writer`` (made, not entered, by the caller, so
        that a bad output location is refused before any work), all or nothing.

        ``produce(name)`` (``produce(load(name))`` with a ``load``, run ahead in the reader
        thread) gives the stored tensors of ``name`` and its index entry, streamed by
        :meth:`CheckpointWriter.stream`; then the index (``format``, ``version``, the
        realignkit version, ``meta``, ``tensors``), the text ``files``, the card and
        ``realignkit.json`` (``inputs``: role → path). Returns the index.
        """
        entries: dict[str, Any] = {}
        with writer:
            for name, entry in writer.stream(
                produce, names, workers=workers, desc=desc, weights=weights, load=load
            ):
                entries[name] = entry
            index = {"format": cls.format, "version": 1, "realignkit_version": __version__}
            index.update(meta)
            index["tensors"] = entries
            writer.write_json(cls.index_file, index)
            for filename, text in (files or {}).items():
                (writer.path / filename).write_text(text, encoding="utf-8")
            write_documents(
                writer,
                method=cls.maker,
                version=1,
                summary=cls.summary,
                parameters={key: index[key] for key in cls.parameters},
                inputs=described(inputs),
                totals=cls._totals(index),
                edited=len(entries),
                copied=0,
                weights={name: cls._described_entry(e) for name, e in entries.items()},
            )
        return index

    @classmethod
    def _totals(cls, index: Mapping[str, Any]) -> dict[str, Any]:
        return {"tensors": len(index["tensors"])}

    @classmethod
    def _described_entry(cls, entry: Any) -> Any:
        return entry

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
    maker = "safety-vector"
    summary = (
        "A safety vector v = θ_aligned − θ_unaligned, for `realignkit resta` and `realignkit "
        "irr`. It is not a model: it cannot be loaded on its own."
    )
    parameters = ("form", "dtype")

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
    maker = "fisher"
    summary = (
        "Diagonal Fisher safety-importance scores for `realignkit irr`. Not a model: it holds "
        "one fp32 score per weight of the edited layers."
    )
    parameters = ("mode", "batch_size", "max_length", "generated_responses", "modules")

    @classmethod
    def _totals(cls, index: Mapping[str, Any]) -> dict[str, Any]:
        return {key: index[key] for key in ("samples", "response_tokens")}

    @classmethod
    def _described_entry(cls, entry: Any) -> Any:
        return {"shape": entry}

    def _missing(self, name: str) -> str:
        return f"tensor {name!r} has no Fisher scores in {self.dir}"

    def get(self, name: str) -> torch.Tensor:
        return super().get(name).float()
