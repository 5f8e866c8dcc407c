"""RESTA (Bhardwaj et al. 2024): add the safety vector back to a fine-tuned model.

    θ_realigned = θ_F + γ · v,     v = θ_aligned − θ_unaligned

With DARE, the fine-tuning delta δ = θ_F − θ_B is first sparsified (each entry dropped with
probability p, the rest rescaled by 1/(1 − p)), which removes redundant task updates that
may carry the unsafe behaviour:

    θ_realigned = θ_B + DARE_p(θ_F − θ_B) + γ · v

The paper reports γ = 0.5 and p = 0.3. The method is a declaration (:data:`RESTA`) and one
pure function per weight (:func:`resta_tensor`); :mod:`realignkit.execute` does the rest.
Tensors are streamed: memory holds a few tensors and
one output shard, whatever the model size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from realignkit.contract import Edit, Method, Param, WeightInputs
from realignkit.errors import RealignError
from realignkit.ops.dare import DARE_STREAMS, DareStream, keep_chunks
from realignkit.ops.scratch import scratch
from realignkit.ops.selection import EXTRA_KINDS, parse_include

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
    if drop_p > 0.0 and theta_b is None:
        raise RealignError("DARE needs the base model (--base)")
    result = torch.empty_like(theta_f, memory_format=torch.contiguous_format)
    flat_f, out = theta_f.reshape(-1), result.view(-1)
    flat_b = theta_b.reshape(-1) if drop_p > 0.0 and theta_b is not None else None
    flat_v = v.reshape(-1) if v is not None else None
    count = flat_f.numel()
    keep = keep_chunks(theta_f.shape, drop_p, seed, name, dare_stream, PIECE) if drop_p else None
    # Piece by piece (every operation is elementwise, so the result is the same bits): the
    # scratch stays a few cache-sized buffers whatever the tensor (a 32000 × 4096 embedding
    # needed 1 GB of fp32 scratch per worker whole), and each pass runs from the cache.
    for start in range(0, count, PIECE):
        stop = min(count, start + PIECE)
        theta = scratch(wide, (stop - start,), 0).copy_(flat_f[start:stop])
        if flat_b is not None and keep is not None:
            base = scratch(wide, (stop - start,), 1).copy_(flat_b[start:stop])
            # θ_B + keep·(θ_F − θ_B)/(1 − p): the DARE paper's rescale, as in ops.dare.dare.
            # The boolean product runs in numpy, in place: torch's mixed bool·float kernel
            # took 2× as long and needs a float copy of the mask.
            theta.sub_(base).div_(1.0 - drop_p)
            np.multiply(theta.numpy(), next(keep), out=theta.numpy())
            theta.add_(base)
        if flat_v is not None:
            theta.add_(scratch(wide, (stop - start,), 1).copy_(flat_v[start:stop]), alpha=gamma)
        out[start:stop].copy_(theta)
    return result


PIECE = 1 << 20
"""Entries per pass of :func:`resta_tensor` (4 MiB of fp32, a multiple of 4 as DARE's mask
pieces need): big enough that per-pass overhead vanishes, small enough to stay in cache."""


FLOAT32_MAX = float(torch.finfo(torch.float32).max)
DEFAULT_SCOPE_HELP = (
    "By default only the 2-D weights inside the decoder blocks are edited (attention and MLP "
    "projections); --include adds embeddings, norms, biases, lm_head, other (2-D tensors "
    "outside the blocks) or all."
)
"""What a weight edit touches (:mod:`realignkit.ops.selection`), in the command's words."""

PARAMS = (
    Param(
        "gamma",
        float,
        0.5,
        "Weight γ of the safety vector.",
        low=-FLOAT32_MAX,
        high=FLOAT32_MAX,
        open_low=True,
        open_high=True,
        rule="a finite float32 number",
        safer="higher",
        search=(0.0, 2.0),
    ),
    Param(
        "dare_p",
        float,
        None,
        "DARE drop rate p in [0, 1) on θ_F − θ_B; kept entries × 1/(1−p).",
        low=0.0,
        high=1.0,
        open_high=True,
        flag="--dare",
        optional=True,
    ),
    Param("seed", int, 0, "Seed of the DARE masks (per tensor name).", sweepable=False),
    Param(
        "dare_stream",
        str,
        "pcg64",
        "Random stream of the DARE masks: pcg64 (fast) or mt19937 (the masks of realignkit "
        "0.1 outputs).",
        choices=DARE_STREAMS,
        sweepable=False,
    ),
    Param(
        "include",
        str,
        (),
        "Also edit: " + ", ".join(EXTRA_KINDS) + ", or all.",
        rule="kinds of tensors: " + ", ".join(EXTRA_KINDS) + " or all",
        multiple=True,
    ),
)


def _drop_rate(params: Mapping[str, Any]) -> float:
    return float(params.get("dare_p") or 0.0)


def edit_weight(given: WeightInputs, params: Mapping[str, Any]) -> Edit:
    """RESTA (and DARE) on one weight: the method's whole computation."""
    v = given.safety_vector
    theta = resta_tensor(
        given.finetuned,
        v,
        params["gamma"],
        theta_b=given.base,
        drop_p=_drop_rate(params),
        seed=params["seed"],
        name=given.name,
        dare_stream=params["dare_stream"],
    )
    return Edit(theta)


def _memory(params: Mapping[str, Any], same_dtype: bool) -> tuple[float, float]:
    """Bytes per entry beyond inputs and result (see :func:`resta_tensor`): the fused path
    allocates nothing; otherwise two fp32 scratch buffers per worker, and DARE's mask costs
    its 16-bit random lanes and the boolean mask. Both cover one piece of :data:`PIECE`
    entries at a time (declared as ``memory_piece``: the planner counts one piece)."""
    dare = _drop_rate(params) > 0.0
    if not dare and same_dtype:
        return 0.0, 0.0
    return 8.0, 3.0 if dare else 0.0


def _needs_when(params: Mapping[str, Any]) -> dict[str, str]:
    if _drop_rate(params) > 0.0:
        return {"base": "--dare needs --base, the model the fine-tune started from"}
    return {}


def _check_include(params: Mapping[str, Any]) -> None:
    try:
        parse_include(params["include"])
    except ValueError as err:
        raise RealignError(f"--include: {err}") from err


def _card(params: Mapping[str, Any], _stats: Mapping[str, Any]) -> tuple[str, str]:
    drop = _drop_rate(params)
    body = (
        "## Method\n\nRESTA: θ = θ_F + γ·v with the safety vector v = θ_aligned − θ_unaligned"
        + (
            ", after DARE on the fine-tuning delta θ_F − θ_B (each entry dropped with "
            "probability p, kept entries divided by 1 − p; each tensor's mask comes from the "
            f"{params['dare_stream']} stream keyed by (seed, tensor name))."
            if drop
            else "."
        )
        + f"\n\n{DEFAULT_SCOPE_HELP}\n"
    )
    return "RESTA" + ("+DARE" if drop else ""), body


RESTA = Method(
    name="resta",
    version=1,
    summary="A fine-tuned model re-aligned for safety by adding back a safety vector.",
    help="Re-align a fine-tuned model: θ_F + γ·v, optionally with DARE on θ_F − θ_B. "
    + DEFAULT_SCOPE_HELP,
    kind="weight",
    params=PARAMS,
    needs=frozenset({"finetuned", "safety_vector"}),
    edit_weight=edit_weight,
    needs_when=_needs_when,
    card=_card,
    sweep_grid={"gamma": [0.25, 0.5, 1.0, 1.5]},
    paper={"gamma": 0.5},  # the RESTA paper's γ
    validate=_check_include,
    memory=_memory,
    memory_piece=PIECE,
)
# The sweep's "resta+dare": the same method, starting from the paper's p = 0.3.
RESTA_DARE = replace(
    RESTA,
    name="resta+dare",
    cli=False,
    sweep_defaults={"dare_p": 0.3},
    sweep_grid={"gamma": 0.5, "dare_p": [0.1, 0.3, 0.5]},
    paper={"gamma": 0.5, "dare_p": 0.3},  # the RESTA paper's DARE drop rate
)
