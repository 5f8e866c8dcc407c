"""The safety vector ``v = θ_aligned − θ_unaligned`` (RESTA, IRR).

The unaligned model is the aligned one fine-tuned on harmful question answering, so ``v``
points from "complies with harmful requests" back to "refuses them". It is computed tensor by
tensor and stored as a folder of safetensors shards plus ``safety_vector.json`` describing the
inputs, their architecture, the tensors and their shapes.

When the unaligned model is a LoRA adapter trained on top of the aligned model,
``v = −scale · B·A`` for each adapted module: the folder then stores the two factors
(``<weight>::left = −scale·B`` and ``<weight>::right = A``) instead of a dense copy, and
:class:`SafetyVector` expands them one tensor at a time when a method asks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from realignkit import __version__
from realignkit.checkpoint import (
    CheckpointReader,
    CheckpointWriter,
    FinetunedWeights,
    check_same_layout,
    ensure_finite,
    model_card,
)
from realignkit.checkpoint.stream import map_ordered
from realignkit.checkpoint.writer import TensorSpec
from realignkit.errors import RealignError
from realignkit.ops.scratch import widened_difference

META_FILE = "safety_vector.json"
FORMAT = "realignkit-safety-vector"
LEFT, RIGHT = "::left", "::right"
PathLike = str | os.PathLike[str]


def compute_safety_vector(
    aligned: PathLike,
    out: PathLike,
    *,
    unaligned: PathLike | None = None,
    unaligned_adapter: PathLike | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    max_shard_size: str | int = "1GB",
    workers: int = 2,
) -> Path:
    """Write ``v = θ_aligned − θ_unaligned`` to ``out`` and return its path.

    ``dtype`` is the stored precision (default: the aligned model's own dtype per tensor);
    the difference itself is always taken in float32 or wider.
    """
    if (unaligned is None) == (unaligned_adapter is None):
        raise RealignError("give exactly one of --unaligned or --unaligned-adapter")
    aligned_ckpt = CheckpointReader(aligned, allow_pickle=allow_pickle, what="aligned model")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "realignkit_version": __version__,
        "aligned": str(aligned_ckpt.dir),
        "architecture": aligned_ckpt.architecture,
        "model_type": aligned_ckpt.config.get("model_type"),
        "vocab_size": aligned_ckpt.config.get("vocab_size"),
        "dtype": str(dtype).removeprefix("torch.") if dtype else "as aligned",
    }
    tensors: dict[str, dict[str, Any]] = {}
    plan = None
    if unaligned is not None:
        # Dense: the output's tensors are known up front, so shards stream straight to disk.
        unaligned_ckpt = CheckpointReader(
            unaligned, allow_pickle=allow_pickle, what="unaligned model"
        )
        names = [n for n in aligned_ckpt.names if aligned_ckpt.dtype(n).is_floating_point]
        check_same_layout(aligned_ckpt, unaligned_ckpt, names, same_set=True)
        plan = [TensorSpec(n, aligned_ckpt.shape(n), dtype or aligned_ckpt.dtype(n)) for n in names]
    with (
        aligned_ckpt,
        CheckpointWriter(out, overwrite=overwrite, max_shard_size=max_shard_size, plan=plan) as w,
    ):
        if unaligned is not None:
            meta["form"] = "dense"
            meta["unaligned"] = str(unaligned_ckpt.dir)

            def difference(name: str) -> torch.Tensor:
                a = aligned_ckpt.get(name)
                return widened_difference(a, unaligned_ckpt.get(name), dtype or a.dtype)

            with unaligned_ckpt:
                for name, v in map_ordered(
                    difference,
                    names,
                    workers=workers,
                    desc="safety vector",
                    weights=aligned_ckpt.nbytes,
                ):
                    w.add(name, v)
                    tensors[name] = {"shape": list(v.shape), "lowrank": False}
        else:
            meta["form"] = "lowrank"
            unaligned_weights = FinetunedWeights(base=aligned, adapter=unaligned_adapter)
            adapter = unaligned_weights.adapter
            assert adapter is not None
            meta["unaligned_adapter"] = str(adapter.dir)
            replaced = set(adapter.full_tensors())
            for name in adapter.target_weights():
                if name in replaced:
                    continue  # a whole new tensor plus a delta: stored densely below
                factors = adapter.factors(name)
                store = dtype or factors.lora_a.dtype
                left = (-factors.scale * factors.lora_b.float()).to(store)
                right = factors.lora_a.to(store)
                ensure_finite(left, name, f"adapter {str(adapter.dir)!r}")
                ensure_finite(right, name, f"adapter {str(adapter.dir)!r}")
                w.add(name + LEFT, left)
                w.add(name + RIGHT, right)
                tensors[name] = {
                    "shape": list(aligned_ckpt.shape(name)),
                    "lowrank": True,
                    "transpose": factors.transpose,
                    "rank": int(right.shape[0]),
                }
            for name in sorted(replaced):
                a = aligned_ckpt.get(name)
                v = (a.float() - unaligned_weights.get(name).float()).to(dtype or a.dtype)
                w.add(name, v)
                tensors[name] = {"shape": list(v.shape), "lowrank": False}
            unaligned_weights.close()
        meta["tensors"] = tensors
        w.write_json(META_FILE, meta)
        inputs = {k: meta[k] for k in ("aligned", "unaligned", "unaligned_adapter") if k in meta}
        w.write_card(
            model_card(
                method="safety-vector",
                summary="A safety vector v = θ_aligned − θ_unaligned, for `realignkit resta` "
                "and `realignkit irr`. It is not a model: it cannot be loaded on its own.",
                inputs=inputs,
                params={"form": meta["form"], "dtype": meta["dtype"], "tensors": len(tensors)},
            )
        )
    return Path(out)


class SafetyVector:
    """A safety-vector folder, read one tensor at a time (dense, or expanded from low rank)."""

    what = "safety vector"

    def __init__(self, path: PathLike) -> None:
        folder = Path(path).expanduser()
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise RealignError(
                f"{str(folder)!r} is not a safety vector folder (no {META_FILE}); "
                "make one with `realignkit safety-vector`"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise RealignError(f"{meta_path}: not a realignkit safety vector")
        self.dir = folder
        self._reader = CheckpointReader(folder, what="safety vector")
        self._tensors: dict[str, dict[str, Any]] = self.meta["tensors"]
        for name, entry in self._tensors.items():  # the files hold what the metadata lists
            for key in (name + LEFT, name + RIGHT) if entry.get("lowrank") else (name,):
                if key not in self._reader:
                    raise RealignError(
                        f"tensor {key!r} of the safety vector is missing from "
                        f"{self._reader.location!r} ({META_FILE} lists it): the folder is damaged"
                    )
        self.names: list[str] = list(self._tensors)
        self.config = {
            "architectures": [self.meta.get("architecture", "unknown")],
            "vocab_size": self.meta.get("vocab_size"),
        }

    @property
    def architecture(self) -> str:
        return str(self.meta.get("architecture", "unknown"))

    @property
    def is_lowrank(self) -> bool:
        return self.meta.get("form") == "lowrank"

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._tensors:
            raise RealignError(f"tensor {name!r} is missing from the safety vector {self.dir}")
        return tuple(self._tensors[name]["shape"])

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
            self.shape(name)  # one-line error when missing
            v = self._reader.get(name)
            return v if dtype is None else v.to(dtype)
        left, right, transpose = lowrank
        dtype = dtype or torch.float32
        v = left.to(dtype) @ right.to(dtype)
        return v.T.contiguous() if transpose else v

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> SafetyVector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_safety_vector(path: PathLike) -> SafetyVector:
    """Open a safety-vector folder written by :func:`compute_safety_vector`."""
    return SafetyVector(path)
