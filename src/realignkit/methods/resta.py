"""RESTA (Bhardwaj et al. 2024): add the safety vector back to a fine-tuned model.

    θ_realigned = θ_F + γ · v,     v = θ_aligned − θ_unaligned

With DARE, the fine-tuning delta δ = θ_F − θ_B is first sparsified (each entry dropped with
probability p, the rest rescaled by 1/(1 − p)), which removes redundant task updates that
may carry the unsafe behaviour:

    θ_realigned = θ_B + DARE_p(θ_F − θ_B) + γ · v

The paper reports γ = 0.5 and p = 0.3. Tensors are streamed: memory holds a few tensors and
one output shard, whatever the model size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from realignkit.checkpoint import CheckpointWriter, FinetunedWeights, ensure_finite, model_card
from realignkit.checkpoint.finetuned import check_same_layout
from realignkit.checkpoint.stream import map_ordered
from realignkit.checkpoint.writer import TensorSpec
from realignkit.errors import RealignError
from realignkit.methods.safety_vector import SafetyVector
from realignkit.ops.dare import DARE_STREAMS, DareStream, dare_keep_mask
from realignkit.ops.scratch import scratch
from realignkit.ops.selection import DEFAULT_SCOPE_HELP, is_selected, parse_include, tensor_kind

PathLike = str | os.PathLike[str]


def resta_tensor(
    theta_f: torch.Tensor,
    v: torch.Tensor | None,
    gamma: float,
    *,
    theta_b: torch.Tensor | None = None,
    drop_p: float = 0.0,
    seed: int = 0,
    name: str = "",
    dare_stream: DareStream = "pcg64",
) -> torch.Tensor:
    """θ_F + γ·v for one tensor (with DARE on θ_F − θ_B when ``drop_p`` > 0), in θ_F's dtype.

    The arithmetic is done in fp32 (fp64 for fp64 inputs) and rounded once to θ_F's dtype.
    A missing ``v`` (a low-rank safety vector that does not touch this tensor) counts as 0.

    Speed: at 7B scale every pass over a tensor is memory bandwidth, so the work is done in
    place in per-thread fp32 scratch buffers (fresh allocations cost more in page faults than
    the arithmetic) and every operation has operands of one dtype (mixed-dtype kernels ran 7×
    slower than same-dtype ones on this project's CPU). The order of operations is that of the
    formula, so results equal the straightforward widened computation bit for bit.
    """
    if drop_p == 0.0 and v is not None and v.dtype == theta_f.dtype:
        # One fused kernel: low-precision inputs are widened to fp32 inside it and the sum is
        # rounded once, bit-identical to the widened path below at a third of the traffic.
        return torch.add(theta_f, v, alpha=gamma)
    wide = torch.float64 if theta_f.dtype == torch.float64 else torch.float32
    theta = scratch(wide, theta_f.shape, 0).copy_(theta_f)
    if drop_p > 0.0:
        if theta_b is None:
            raise RealignError("DARE needs the base model (--base)")
        base = scratch(wide, theta_f.shape, 1).copy_(theta_b)
        keep = dare_keep_mask(theta_f.shape, drop_p, seed, name, dare_stream)
        # θ_B + keep·(θ_F − θ_B)/(1 − p): the DARE paper's rescale, as in ops.dare.dare. The
        # boolean product runs in numpy, in place: torch's mixed bool·float kernel took 2×
        # as long and needs a float copy of the mask.
        theta.sub_(base).div_(1.0 - drop_p)
        np.multiply(theta.numpy(), keep.numpy(), out=theta.numpy())
        theta.add_(base)
    if v is not None:
        theta.add_(scratch(wide, theta_f.shape, 1).copy_(v), alpha=gamma)
    return theta.to(theta_f.dtype, copy=True)


@dataclass
class RestaResult:
    """What :func:`resta` wrote."""

    path: Path
    edited: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)


def resta(
    finetuned: FinetunedWeights,
    safety_vector: SafetyVector,
    out: PathLike,
    *,
    gamma: float = 0.5,
    dare_p: float | None = None,
    seed: int = 0,
    dare_stream: DareStream = "pcg64",
    include: Iterable[str] | str | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "1GB",
    workers: int = 2,
) -> RestaResult:
    """Write θ_F + γ·v (optionally with DARE on the fine-tuning delta) as a model folder."""
    if not math.isfinite(gamma) or abs(gamma) >= torch.finfo(torch.float32).max:
        raise RealignError(f"--gamma must be a finite float32 number, got {gamma}")
    drop_p = float(dare_p or 0.0)
    if not 0.0 <= drop_p < 1.0:
        raise RealignError(f"--dare must be in [0, 1), got {drop_p}")
    if drop_p > 0.0 and finetuned.base is None:
        raise RealignError("--dare needs --base, the model the fine-tune started from")
    if dare_stream not in DARE_STREAMS:
        raise RealignError(
            f"--dare-stream must be one of {', '.join(DARE_STREAMS)}, got {dare_stream!r}"
        )
    kinds = parse_include(include)
    selected = [
        n
        for n in finetuned.names
        if is_selected(n, len(finetuned.shape(n)), kinds, finetuned.dtype(n).is_floating_point)
    ]
    if not selected:
        raise RealignError("no tensor of the fine-tuned model is selected for editing")
    # Check everything before writing anything: a mismatch ends with no output.
    if safety_vector.architecture != finetuned.architecture and "unknown" not in (
        safety_vector.architecture,
        finetuned.architecture,
    ):
        raise RealignError(
            f"the safety vector was made for a {safety_vector.architecture}, the fine-tuned "
            f"model is a {finetuned.architecture}"
        )
    for name in selected:
        if name in safety_vector:
            if tuple(safety_vector.shape(name)) != tuple(finetuned.shape(name)):
                raise RealignError(
                    f"tensor {name!r} has shape {tuple(finetuned.shape(name))} in the fine-tuned "
                    f"model but {tuple(safety_vector.shape(name))} in the safety vector"
                )
        elif not safety_vector.is_lowrank:
            raise RealignError(
                f"tensor {name!r} is missing from the safety vector {safety_vector.dir}"
            )
    if drop_p > 0.0 and finetuned.full is not None:
        assert finetuned.base is not None
        check_same_layout(finetuned.full, finetuned.base, selected)
    selected_set = set(selected)

    def realign(name: str) -> torch.Tensor:
        theta_f = finetuned.get(name)
        if name not in selected_set:
            return theta_f
        v = safety_vector.get(name, dtype=None) if name in safety_vector else None
        theta_b = finetuned.get_base(name) if drop_p > 0.0 else None
        result = resta_tensor(
            theta_f,
            v,
            gamma,
            theta_b=theta_b,
            drop_p=drop_p,
            seed=seed,
            name=name,
            dare_stream=dare_stream,
        )
        ensure_finite(result, name, "the result")  # after the cast: what would be written
        return result

    result = RestaResult(Path(out))
    plan = [TensorSpec(n, tuple(finetuned.shape(n)), finetuned.dtype(n)) for n in finetuned.names]
    with CheckpointWriter(
        out, overwrite=overwrite, max_shard_size=max_shard_size, plan=plan
    ) as writer:
        for name, tensor in map_ordered(
            realign, finetuned.names, workers=workers, desc="RESTA", weights=finetuned.nbytes
        ):
            writer.add(name, tensor)
            (result.edited if name in selected_set else result.copied).append(name)
        writer.copy_support_files(*finetuned.support_dirs)
        kinds_edited = sorted({tensor_kind(n, len(finetuned.shape(n))) for n in result.edited})
        params = {
            "gamma": gamma,
            "dare_p": drop_p if drop_p else "off",
            "dare_rescale": "1/(1-p) (DARE paper)" if drop_p else "-",
            "seed": seed,
            "dare_stream": dare_stream if drop_p else "-",
            "edited tensor kinds": ", ".join(kinds_edited),
            "tensors edited": len(result.edited),
            "tensors copied unchanged": len(result.copied),
        }
        body = (
            "## Method\n\nRESTA: θ = θ_F + γ·v with the safety vector v = θ_aligned − "
            "θ_unaligned"
            + (
                ", after DARE on the fine-tuning delta θ_F − θ_B (each entry "
                "dropped with probability p, kept entries divided by 1 − p; each tensor's mask "
                f"comes from the {dare_stream} stream keyed by (seed, tensor name))."
                if drop_p
                else "."
            )
            + f"\n\n{DEFAULT_SCOPE_HELP}\n"
        )
        inputs = dict(finetuned.describe())
        inputs["safety_vector"] = str(safety_vector.dir)
        writer.write_card(
            model_card(
                method="RESTA" + ("+DARE" if drop_p else ""),
                summary="A fine-tuned model re-aligned for safety by adding back a safety vector.",
                inputs=inputs,
                params=params,
                body=body,
                base_model=inputs.get("finetuned") or inputs.get("base"),
            )
        )
    return result
