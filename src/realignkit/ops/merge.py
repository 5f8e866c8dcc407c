"""Merging two or more task vectors of one weight: linear and TIES (Yadav et al. 2023).

A task vector is a delta from a shared model (``θ_task − θ_shared``). Linear merging is the
weighted sum ``Σ w_i · τ_i``. TIES trims each vector to its ``density`` largest-magnitude
entries, elects one sign per entry (the sign of the weighted sum of the trimmed vectors),
and averages, per entry, only the weighted trimmed values that agree with the elected sign
(the "disjoint mean": divided by the sum of the agreeing weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def linear_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``Σ w_i · τ_i`` (a new tensor, in the first delta's dtype)."""
    if len(deltas) != len(weights) or not deltas:
        raise ValueError("linear merging needs one weight per task vector, and at least one")
    merged = deltas[0] * weights[0]
    for delta, weight in zip(deltas[1:], weights[1:], strict=True):
        merged = merged.add(delta, alpha=weight)
    return merged


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its ``ceil(density · n)`` largest-magnitude entries set to 0.

    Ties at the cut keep the earlier entries (flat order), so exactly that many survive.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")
    count = delta.numel()
    keep = min(count, int(-(-density * count // 1)))
    if keep == count:
        return delta.clone()
    flat = delta.reshape(-1)
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:keep]
    trimmed = torch.zeros_like(flat)
    trimmed[order] = flat[order]
    return trimmed.reshape(delta.shape)


def ties_merge(
    deltas: Sequence[torch.Tensor], weights: Sequence[float], density: float
) -> torch.Tensor:
    """TIES merging: trim, elect sign, disjoint weighted mean (0 where nothing agrees)."""
    if len(deltas) != len(weights) or not deltas:
        raise ValueError("TIES merging needs one weight per task vector, and at least one")
    trimmed = torch.stack([trim_to_density(d, density) for d in deltas])
    w = torch.tensor(list(weights), dtype=trimmed.dtype, device=trimmed.device).reshape(
        -1, *([1] * deltas[0].ndim)
    )
    weighted = trimmed * w
    elected = torch.sign(weighted.sum(dim=0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    total = (weighted * agree).sum(dim=0)
    mass = (w * agree).sum(dim=0)
    return torch.where(mass > 0, total / mass.clamp_min(torch.finfo(mass.dtype).tiny), 0.0)
