"""Safe Delta's selection (Lu et al. 2025, arXiv 2505.12038): which delta entries fit a budget.

Changing entry ``m`` of a layer's weight by ``δ_m`` costs, to second order, the loss increase
of the OBS problem on safety data: ``c_m = δ_m² / (2·[H⁻¹]_mm)`` (``H`` = the Hessian of the
layer's inputs). Keeping an entry gains utility ``δ_m²`` (the fine-tune's change), so the
greedy answer to "most utility for a safety cost ≤ ε" ranks entries by ``δ_m² / c_m =
2·[H⁻¹]_mm`` and keeps the longest prefix of that ranking whose costs sum to at most ε.

Two readings are offered, as the paper's formulas and the official code differ:

``paper``     per layer; ``[H⁻¹]_mm`` the diagonal of the full inverse of the damped ``H``;
              cost ``δ²/(2·[H⁻¹]_mm)``; every entry may be kept.
``official``  per block of ``block_size`` columns (2048); the diagonal ``U_jj`` of the upper
              Cholesky factor of ``H⁻¹`` (the inverse-Hessian diagonal of the columns not yet
              passed, the quantity the column sweep uses) in place of ``[H⁻¹]_mm``, squared:
              cost ``δ²/U_jj²``; the ``exclude`` share (15 %) of entries with the largest
              unit cost ``1/U_jj²`` is never kept.

Budget: ε scales with the unit it applies to, as the official code does:
``ε = s · (rows/4096) · (columns/4096) · mean unit cost`` with the unit cost the cost of
``δ = 1`` on every entry of the unit (``1/(2·[H⁻¹]_mm)`` or ``1/U_jj²``); for a block the
official code uses ``columns = block_size`` even for a last, narrower block, and so do we.
4096 is the hidden size of the Llama-2-7B models the paper tuned ``s`` on.

In the official reading, the delta of a block is taken against the weights as the column
sweep left them (the aligned weights plus the compensation of the blocks before), so the
selection of block ``b`` happens after the sweep has passed blocks ``0..b-1``: the method
module interleaves :func:`select_official_block` with the OBS sweep.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

REFERENCE_WIDTH = 4096
SELECTIONS = ("paper", "official")


class Selection(NamedTuple):
    """Kept entries, the safety cost they spend and the budget ε they had."""

    keep: torch.Tensor
    spent: float
    budget: float


def keep_within_budget(
    costs: torch.Tensor, unit_costs: torch.Tensor, budget: float, exclude: float = 0.0
) -> tuple[torch.Tensor, float]:
    """The longest prefix of entries ranked by unit cost (cheapest first, ties in flat order)
    whose costs sum to at most ``budget``, the ``exclude`` share of dearest entries left out.

    ``costs`` and ``unit_costs`` have one shape; returns the bool mask of kept entries and the
    cost they spend.
    """
    if costs.shape != unit_costs.shape:
        raise ValueError(f"costs {tuple(costs.shape)} and unit costs differ in shape")
    if not 0.0 <= exclude < 1.0:
        raise ValueError(f"the excluded share must be in [0, 1), got {exclude}")
    if budget < 0:
        raise ValueError(f"the safety-cost budget must be >= 0, got {budget}")
    flat_units = unit_costs.reshape(-1)
    order = torch.sort(flat_units, stable=True).indices
    dropped = int(exclude * order.numel())
    if dropped:
        order = order[: order.numel() - dropped]
    running = torch.cumsum(costs.reshape(-1)[order].double(), dim=0)
    within = running <= budget
    keep = torch.zeros(flat_units.numel(), dtype=torch.bool, device=costs.device)
    keep[order] = within
    spent = float(running[within][-1]) if bool(within.any()) else 0.0
    return keep.reshape(costs.shape), spent


def budget_of(scale: float, rows: int, columns: int, unit_costs: torch.Tensor) -> float:
    """``ε = s · (rows/4096) · (columns/4096) · mean(unit costs)``."""
    factor = scale * (rows / REFERENCE_WIDTH) * (columns / REFERENCE_WIDTH)
    return factor * float(unit_costs.double().mean())


def select_paper(
    delta: torch.Tensor, inverse_diagonal: torch.Tensor, scale: float, exclude: float = 0.0
) -> Selection:
    """The paper's selection on a whole ``(out, in)`` delta, with ``[H⁻¹]_jj`` per column."""
    if inverse_diagonal.shape != (delta.shape[1],):
        raise ValueError("the inverse-Hessian diagonal needs one value per input column")
    unit = (0.5 / inverse_diagonal).expand_as(delta)
    budget = budget_of(scale, delta.shape[0], delta.shape[1], unit)
    keep, spent = keep_within_budget(delta.square() * unit, unit, budget, exclude)
    return Selection(keep, spent, budget)


def select_official_block(
    delta: torch.Tensor,
    cholesky_diagonal: torch.Tensor,
    scale: float,
    *,
    block_size: int = 2048,
    exclude: float = 0.15,
) -> Selection:
    """The official selection on one block of columns, with ``U_jj`` of ``H⁻¹ = Uᵀ·U``."""
    if cholesky_diagonal.shape != (delta.shape[1],):
        raise ValueError("the Cholesky diagonal needs one value per column of the block")
    unit = cholesky_diagonal.square().reciprocal().expand_as(delta)
    budget = budget_of(scale, delta.shape[0], block_size, unit)
    keep, spent = keep_within_budget(delta.square() * unit, unit, budget, exclude)
    return Selection(keep, spent, budget)
