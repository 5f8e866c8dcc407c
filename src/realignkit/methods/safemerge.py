"""SafeMERGE (Djuhera et al. 2025, arXiv 2503.17239): merge back only the layers that left safety.

For every decoder-block weight, with the aligned model ``W_A``, its pre-trained base ``W_P``,
the fine-tune ``θ_F`` and a *safety fine-tune* ``θ_S`` (the aligned model fine-tuned on a
small safety set, e.g. with `realignkit finetune`)::

    V  = W_A − W_P,   C = V·Vᵀ / ‖V‖_F              Safe LoRA's alignment projection
    ΔF = θ_F − W_A,   ΔS = θ_S − W_A
    ρ  = cos(C·ΔF, ΔF)                               how far the update left the subspace
    W  = W_A + merge(ΔF, ΔS)   where ρ < τ,  θ_F elsewhere

``merge`` is linear, ``α·ΔF + (1 − α)·ΔS``, or TIES on the two deltas with weights α and
1 − α. The paper merges LoRA adapters (``B·A`` products); here the deltas are dense per
weight, so full fine-tunes and adapters (``--base``/``--adapter``, ``--safety-adapter``)
are handled alike and the output is a full model folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from realignkit.contract import Edit, Method, Param, WeightInputs
from realignkit.errors import RealignError
from realignkit.ops.merge import linear_merge, ties_merge
from realignkit.ops.projection import apply_alignment_projection, frobenius_cosine

MERGES = ("linear", "ties")
PARAMS = (
    Param(
        "threshold",
        float,
        0.5,
        "Merge the layers whose cosine similarity ρ = cos(C·ΔF, ΔF) is below τ.",
        low=-1.0,
        high=1.0,
        safer="higher",
        search=(-1.0, 1.0),
    ),
    Param("merge", str, "linear", "How a selected layer is merged.", choices=MERGES),
    Param(
        "weight",
        float,
        0.5,
        "α: the fine-tune's share in a merged layer (the safety fine-tune gets 1 − α).",
        low=0.0,
        high=1.0,
        safer="lower",
        search=(0.0, 1.0),
    ),
    Param(
        "density",
        float,
        0.5,
        "TIES only: the fraction of each delta's largest entries kept before electing signs.",
        low=0.0,
        high=1.0,
        open_low=True,
    ),
)


def layer_similarity(
    delta: torch.Tensor, aligned: torch.Tensor, pretrained: torch.Tensor, name: str
) -> float:
    """``cos(C·ΔF, ΔF)`` with ``C`` from ``V = W_A − W_P``; all in (out, in) orientation."""
    v = aligned - pretrained
    norm = float(torch.linalg.matrix_norm(v))
    if norm == 0.0:
        raise RealignError(
            f"tensor {name!r} is the same in the aligned and the pre-trained model: SafeMERGE "
            "needs what alignment changed (check --aligned and --pretrained)"
        )
    return frobenius_cosine(apply_alignment_projection(v, delta, norm), delta)


def edit_weight(given: WeightInputs, params: Mapping[str, Any]) -> Edit:
    """One weight: its similarity, and the merged weight when it falls below τ."""
    assert given.aligned is not None and given.pretrained is not None
    assert given.safety_finetune is not None
    wide = torch.float64 if given.finetuned.dtype == torch.float64 else torch.float32
    w_a = given.aligned.to(wide)
    delta_f = given.finetuned.to(wide) - w_a
    oriented = (lambda t: t.T) if given.transposed else (lambda t: t)
    similarity = layer_similarity(
        oriented(delta_f), oriented(w_a), oriented(given.pretrained.to(wide)), given.name
    )
    if not similarity < params["threshold"]:
        return Edit(given.finetuned, {"similarity": similarity, "merged": False})
    delta_s = given.safety_finetune.to(wide) - w_a
    alpha = params["weight"]
    if params["merge"] == "ties":
        merged = ties_merge([delta_f, delta_s], [alpha, 1.0 - alpha], params["density"])
    else:
        merged = linear_merge([delta_f, delta_s], [alpha, 1.0 - alpha])
    return Edit(w_a + merged, {"similarity": similarity, "merged": True})


def _card(params: Mapping[str, Any], _stats: Mapping[str, Any]) -> tuple[str, str]:
    how = (
        f"TIES (density {params['density']}, weights α = {params['weight']} and 1 − α)"
        if params["merge"] == "ties"
        else f"α·ΔF + (1 − α)·ΔS with α = {params['weight']}"
    )
    body = (
        "## Method\n\nSafeMERGE: for each decoder-block weight, ρ = cos(C·ΔF, ΔF) with Safe "
        "LoRA's projection C = V·Vᵀ/‖V‖_F, V = W_aligned − W_pretrained and ΔF = θ_F − "
        f"W_aligned. Weights with ρ < τ = {params['threshold']} become W_aligned + {how}, "
        "ΔS = θ_safety − W_aligned; the others keep θ_F. Per-weight similarities are in "
        "realignkit.json.\n"
    )
    return "SafeMERGE", body


SAFEMERGE = Method(
    name="safemerge",
    version=1,
    summary="A fine-tuned model whose layers that left the alignment subspace were merged "
    "with a safety fine-tune.",
    help="SafeMERGE: merge the layers whose update left the alignment subspace (cosine "
    "similarity below --threshold) with the same layers of a safety fine-tune.",
    kind="weight",
    params=PARAMS,
    needs=frozenset({"finetuned", "aligned", "pretrained", "safety_finetune"}),
    edit_weight=edit_weight,
    orientation=True,
    card=_card,
    sweep_grid={"threshold": [0.3, 0.5, 0.7]},
    # linear merging with equal weights; the paper tunes τ per model (0.5: Safe LoRA's)
    paper={"threshold": 0.5, "merge": "linear", "weight": 0.5},
)
