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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

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
from realignkit.checkpoint.writer import TensorSpec
from realignkit.errors import RealignError
from realignkit.ops.scratch import widened_difference

META_FILE, FORMAT = SAFETY_VECTOR_FILE, SAFETY_VECTOR_FORMAT
PathLike = str | os.PathLike[str]
Stored = tuple[dict[str, torch.Tensor], dict[str, Any]]  # stored tensors, index entry


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
    # Not run through the executor (execute._Opened and _run_weights), on purpose: what it
    # would share is already shared (CheckpointReader, check_same_layout, the planned
    # CheckpointWriter and its stream), and the rest differs. Its inputs are two models, not a
    # fine-tune θ_F: the executor opens θ_F as "the fine-tuned model" and the tests pin this
    # command's errors naming "the aligned model" and "the unaligned model". Its output is an
    # artifact, not a model: only the floating tensors, a low-rank v as two tensors per weight
    # (``::left``/``::right``), no config or tokenizer, and the safety_vector.json index that
    # SafetyVector reads, written by SafetyVector.write as Fisher scores are. Routing it would
    # give the executor a third output form beside models and adapters for one caller.
    if (unaligned is None) == (unaligned_adapter is None):
        raise RealignError("give exactly one of --unaligned or --unaligned-adapter")
    with ExitStack() as stack:
        aligned_ckpt = stack.enter_context(
            CheckpointReader(aligned, allow_pickle=allow_pickle, what="aligned model")
        )
        meta: dict[str, Any] = {
            "aligned": str(aligned_ckpt.dir),
            "architecture": aligned_ckpt.architecture,
            "model_type": aligned_ckpt.config.get("model_type"),
            "vocab_size": aligned_ckpt.config.get("vocab_size"),
            "dtype": str(dtype).removeprefix("torch.") if dtype else "as aligned",
        }

        if unaligned is not None:
            # Dense: the output's tensors are known up front, so shards stream straight to disk.
            other = stack.enter_context(
                CheckpointReader(unaligned, allow_pickle=allow_pickle, what="unaligned model")
            )
            names = [n for n in aligned_ckpt.names if aligned_ckpt.dtype(n).is_floating_point]
            check_same_layout(aligned_ckpt, other, names, same_set=True)
            meta.update(form="dense", unaligned=str(other.dir))
            plan = [
                TensorSpec(n, aligned_ckpt.shape(n), dtype or aligned_ckpt.dtype(n)) for n in names
            ]
            adapter, lowrank = None, set()
        else:
            other = stack.enter_context(FinetunedWeights(base=aligned, adapter=unaligned_adapter))
            adapter = other.adapter
            assert adapter is not None
            meta.update(form="lowrank", unaligned_adapter=str(adapter.dir))
            replaced = set(adapter.full_tensors())  # a whole new tensor plus a delta: dense
            lowrank = {n for n in adapter.target_weights() if n not in replaced}
            names = [n for n in adapter.target_weights() if n in lowrank] + sorted(replaced)
            plan = None

        def factors(name: str) -> Stored:
            """``v = −scale·B·A`` of one adapted weight, as its two factors."""
            assert adapter is not None
            f = adapter.factors(name)
            store = dtype or f.lora_a.dtype
            left = (-f.scale * f.lora_b.float()).to(store)
            right = f.lora_a.to(store)
            ensure_finite(left, name, f"adapter {str(adapter.dir)!r}")
            ensure_finite(right, name, f"adapter {str(adapter.dir)!r}")
            entry = {"shape": list(aligned_ckpt.shape(name)), "lowrank": True}
            entry.update(transpose=f.transpose, rank=int(right.shape[0]))
            return {name + LEFT: left, name + RIGHT: right}, entry

        def load(name: str) -> tuple[str, tuple[torch.Tensor, torch.Tensor] | None]:
            """Both dense tensors of ``name`` (in the reader thread: ahead of compute)."""
            if name in lowrank:
                return name, None  # the factors are small: read where they are used
            return name, (aligned_ckpt.get(name), other.get(name))

        def stored(loaded: tuple[str, tuple[torch.Tensor, torch.Tensor] | None]) -> Stored:
            name, dense = loaded
            if dense is None:
                return factors(name)
            a, b = dense
            v = widened_difference(a, b, dtype or a.dtype)
            return {name: v}, {"shape": list(v.shape), "lowrank": False}

        writer = CheckpointWriter(
            out, overwrite=overwrite, max_shard_size=max_shard_size, plan=plan
        )
        inputs = ("aligned", "unaligned", "unaligned_adapter")
        SafetyVector.write(
            writer,
            stored,
            names,
            meta=meta,
            inputs={k: meta[k] for k in inputs if k in meta},
            workers=workers if plan is not None else 1,
            load=load,
            desc="safety vector" if plan is not None else None,
            weights=aligned_ckpt.nbytes if plan is not None else None,
        )
    return Path(out)


def open_safety_vector(path: PathLike) -> SafetyVector:
    """Open a safety-vector folder written by :func:`compute_safety_vector`."""
    return SafetyVector(path)
