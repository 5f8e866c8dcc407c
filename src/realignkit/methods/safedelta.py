"""Safe Delta (Lu et al., ICML 2025, arXiv 2505.12038): keep the delta that safety can afford.

For every linear layer of the decoder blocks, with the aligned weights ``W_A``, the fine-tuned
``W_F``, ``δ = W_F − W_A`` and ``H = (2/n) Σ x xᵀ`` of the layer's inputs when the *aligned*
model reads safety data (harmful prompts with safe responses)::

    1. estimate   c_m = δ_m² / (2·[H⁻¹]_mm)              the safety cost of keeping δ_m
    2. select     keep the entries of best utility per cost (rank by [H⁻¹]_mm) while
                  Σ c_m ≤ ε, ε = s · (rows/4096)·(cols/4096) · mean unit cost
    3. compensate the others go back to W_A, then move them (OBS, the SparseGPT column sweep
                  of ops/obs.py) so the layer's outputs on safety data stay the aligned ones:
                  min ‖(W − W_A)·X‖  subject to  W_m = W_F,m for the kept m

``selection="paper"`` is the formulas above on the whole layer. ``selection="official"`` is
the official code (ColinLu50/SafeDelta): 2048-column blocks, the sweep's sequential
inverse-Hessian diagonal ``U_jj²`` in place of ``[H⁻¹]_mm`` and without the factor 2, the 15 %
dearest entries never kept, and each block's delta taken against the weights as compensated
by the blocks before (see :mod:`realignkit.ops.safedelta`). Two official choices are not
offered: it propagates compensation lazily inside 4-column groups (an approximation of the
exact sweep used here, which equals it when the group is one column), and it builds its
safety prompts with Llama-2 ``[INST]`` templates and system prompts (here: the model's own
chat template, as every realignkit method that runs the model). As in the official code,
every layer sees the inputs the unedited aligned model gives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from realignkit.contract import DATA_PARAMS, Edit, LayerInputs, Method, Param
from realignkit.ops.obs import (
    obs_recalibrate,
    output_error,
    prepare_hessian,
    upper_cholesky_of_inverse,
)
from realignkit.ops.safedelta import SELECTIONS, select_official_block, select_paper

OFFICIAL_EXCLUDE = 0.15
PARAMS = (
    Param(
        "budget",
        float,
        0.1,
        "s: the safety-cost budget ε = s · (rows/4096)·(cols/4096) · mean unit cost per layer "
        "(official: per block); 0 keeps nothing of the fine-tune.",
        low=0.0,
        safer="lower",
        search=(0.0, 1.0),
    ),
    Param("selection", str, "official", "Which reading of Safe Delta.", choices=SELECTIONS),
    Param(
        "exclude",
        float,
        None,
        "Share of the dearest entries never kept (default: 0.15 official, 0 paper).",
        low=0.0,
        high=1.0,
        open_high=True,
        optional=True,
    ),
    Param(
        "block_size",
        int,
        2048,
        "Columns per selection block (official selection).",
        low=1,
    ),
    Param(
        "compensate",
        bool,
        True,
        "Apply the OBS compensation after the selection (off: an ablation).",
    ),
    *DATA_PARAMS,
)


def _compensated(
    current: torch.Tensor, target: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """``target`` on the kept entries, the others moved from ``current`` so the outputs on the
    data change least: ``target + D`` with ``D`` the OBS solution for ``current − target``.
    ``hessian`` is already damped (the sweep adds no more)."""
    change = obs_recalibrate(
        current - target, hessian, keep, damping=0.0, compute_dtype=current.dtype
    )
    return target + change


def edit_layer(given: LayerInputs, params: Mapping[str, Any]) -> Edit:
    """Safe Delta on one linear layer (``(out, in)`` tensors)."""
    aligned, finetuned = given.aligned, given.finetuned.to(given.aligned.dtype)
    hessian = prepare_hessian(given.hessian.to(aligned.dtype), params["damping"])
    upper = upper_cholesky_of_inverse(hessian)
    scale, official = params["budget"], params["selection"] == "official"
    exclude = params["exclude"]
    if exclude is None:
        exclude = OFFICIAL_EXCLUDE if official else 0.0
    if not official:
        chosen = select_paper(finetuned - aligned, upper.square().sum(dim=0), scale, exclude)
        keep, spent, budget = chosen.keep, chosen.spent, chosen.budget
        if params["compensate"]:
            result = _compensated(aligned, finetuned, hessian, keep)
        else:
            result = torch.where(keep, finetuned, aligned)
    else:
        current = aligned.clone()
        keep = torch.zeros_like(aligned, dtype=torch.bool)
        spent = budget = 0.0
        diagonal = torch.diagonal(upper)
        width = params["block_size"]
        for start in range(0, aligned.shape[1], width):
            end = min(start + width, aligned.shape[1])
            chosen = select_official_block(
                finetuned[:, start:end] - current[:, start:end],
                diagonal[start:end],
                scale,
                block_size=width,
                exclude=exclude,
            )
            keep[:, start:end] = chosen.keep
            spent, budget = spent + chosen.spent, budget + chosen.budget
            if params["compensate"]:
                mask = torch.zeros_like(current[:, start:], dtype=torch.bool)
                mask[:, : end - start] = chosen.keep
                current[:, start:] = _compensated(
                    current[:, start:], finetuned[:, start:], hessian[start:, start:], mask
                )
            else:
                current[:, start:end] = torch.where(
                    chosen.keep, finetuned[:, start:end], current[:, start:end]
                )
        result = current
    raw = given.hessian.to(aligned.dtype)
    stats = {
        "entries": keep.numel(),
        "kept": int(keep.sum()),
        "safety_cost": spent,
        "budget": budget,
        # mean squared change of the layer's outputs on the safety data, from the aligned layer
        "output_error_finetuned": output_error(finetuned - aligned, raw),
        "output_error_reset": output_error(torch.where(keep, finetuned, aligned) - aligned, raw),
        "output_error": output_error(result - aligned, raw),
    }
    return Edit(result, stats)


def _card(params: Mapping[str, Any], _stats: Mapping[str, Any]) -> tuple[str, str]:
    body = (
        "## Method\n\nSafe Delta: in every linear layer of the decoder blocks, the entries of "
        "δ = θ_F − θ_aligned whose safety cost c_m = δ_m²/(2·[H⁻¹]_mm) (H: the aligned "
        "model's layer inputs on the safety data) fits the budget are kept, ranked by "
        "[H⁻¹]_mm; the others are reset to the aligned weights"
        + (
            " and moved by the OBS compensation so that the layer's outputs on the safety "
            "data stay as the aligned model's."
            if params["compensate"]
            else " (no compensation)."
        )
        + f" Selection: {params['selection']} (see realignkit.methods.safedelta). Kept entries "
        "and spent costs per layer are in realignkit.json.\n"
    )
    return "Safe Delta", body


SAFEDELTA = Method(
    name="safedelta",
    version=1,
    summary="A fine-tuned model whose delta was cut to what a safety-cost budget allows, "
    "with the rest compensated on safety data (Safe Delta).",
    help="Safe Delta: keep the fine-tuning delta entries that fit a safety-cost --budget "
    "(estimated from the aligned model's Hessians on --safety-data), reset the others to "
    "--aligned and compensate them by OBS.",
    kind="layer",
    params=PARAMS,
    needs=frozenset({"finetuned", "aligned", "safety_data"}),
    edit_layer=edit_layer,
    sequential=False,
    card=_card,
    sweep_grid={"budget": [0.02, 0.1, 0.5]},
    # the official code's scale (run_safedelta.py: s = 0.1, 128 samples of 512 tokens)
    paper={"budget": 0.1, "selection": "official"},
)
