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

import os
from pathlib import Path
from typing import Any

import torch

from realignkit._version import __version__
from realignkit.checkpoint import (
    CheckpointReader,
    CheckpointWriter,
    FinetunedWeights,
    check_same_layout,
    ensure_finite,
)
from realignkit.checkpoint.artifact import (
    LEFT,
    RIGHT,
    SAFETY_VECTOR_FILE,
    SAFETY_VECTOR_FORMAT,
    SafetyVector,
)
from realignkit.checkpoint.card import described, write_documents
from realignkit.checkpoint.stream import map_ordered
from realignkit.checkpoint.writer import TensorSpec
from realignkit.errors import RealignError
from realignkit.ops.scratch import widened_difference

META_FILE, FORMAT = SAFETY_VECTOR_FILE, SAFETY_VECTOR_FORMAT
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
        write_documents(
            w,
            method="safety-vector",
            version=1,
            summary="A safety vector v = θ_aligned − θ_unaligned, for `realignkit resta` "
            "and `realignkit irr`. It is not a model: it cannot be loaded on its own.",
            parameters={"form": meta["form"], "dtype": meta["dtype"]},
            inputs=described(inputs),
            totals={"tensors": len(tensors)},
            edited=len(tensors),
            copied=0,
            weights=tensors,
        )
    return Path(out)


def open_safety_vector(path: PathLike) -> SafetyVector:
    """Open a safety-vector folder written by :func:`compute_safety_vector`."""
    return SafetyVector(path)
