"""Safe LoRA's alignment projection (Hsu et al. 2024), as pure tensor functions.

For one weight, the alignment matrix is ``V = W_aligned − W_pretrained`` in ``(out, in)``
orientation and the projection is ``C = V·Vᵀ / ‖V‖_F``, an ``(out, out)`` matrix acting on the
layer's output space. A fine-tuning update ``X`` (LoRA's ``B`` of shape ``(out, r)``, or a full
delta of shape ``(out, in)``) becomes ``C·X``. The update is kept as it is when it already lies
close to the alignment subspace: the Frobenius cosine similarity of ``C·X·(A)`` and ``X·(A)``
decides.

``C`` is never needed itself: ``C·X = V·(Vᵀ·X) / ‖V‖_F`` costs ``2·out·in·k`` multiply-adds for
``X`` of shape ``(out, k)`` and holds an ``(in, k)`` intermediate, while forming ``C`` costs
``out²·in`` and holds ``out²`` numbers. :func:`apply_alignment_projection` picks whichever order
is cheaper (always the first for LoRA's thin ``B``); both give the same matrix.
"""

from __future__ import annotations

import torch


def product_order(out_features: int, in_features: int, columns: int) -> str:
    """``"vt_x"`` for V·(Vᵀ·X) or ``"gram"`` for (V·Vᵀ)·X, whichever takes fewer flops."""
    thin = 2 * out_features * in_features * columns
    gram = out_features * out_features * (in_features + columns)
    return "vt_x" if thin <= gram else "gram"


def apply_alignment_projection(
    v: torch.Tensor, x: torch.Tensor, v_norm: float | None = None
) -> torch.Tensor:
    """``C·X`` with ``C = V·Vᵀ / ‖V‖_F``, for ``V`` of shape (out, in) and ``X`` of shape (out, k).

    ``v_norm`` may be passed when the caller already has ``‖V‖_F``; it must not be 0.
    """
    if v.ndim != 2 or x.ndim != 2 or v.shape[0] != x.shape[0]:
        raise ValueError(f"shapes {tuple(v.shape)} and {tuple(x.shape)} do not fit V·Vᵀ·X")
    norm = float(torch.linalg.matrix_norm(v)) if v_norm is None else float(v_norm)
    if norm == 0.0:
        raise ValueError("the alignment matrix V is zero")
    x = x.to(v.dtype)
    if product_order(v.shape[0], v.shape[1], x.shape[1]) == "vt_x":
        return (v @ (v.T @ x)) / norm
    return ((v @ v.T) @ x) / norm


def frobenius_cosine(projected: torch.Tensor, original: torch.Tensor) -> float:
    """Cosine similarity of two matrices flattened (Frobenius inner product), in float64.

    An all-zero ``original`` is its own projection: similarity 1. A non-zero update whose
    projection vanishes is orthogonal to the alignment subspace: similarity 0.
    """
    p, o = projected.double(), original.double()
    o_norm = float(torch.linalg.vector_norm(o))
    if o_norm == 0.0:
        return 1.0
    p_norm = float(torch.linalg.vector_norm(p))
    if p_norm == 0.0:
        return 0.0
    return float((p * o).sum()) / (p_norm * o_norm)


def lowrank_cosine(projected_b: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
    """``cos(C·B·A, B·A)`` without forming an (out, in) product.

    With ``G = A·Aᵀ`` (r × r): ``⟨X·A, Y·A⟩_F = tr(Xᵀ·Y·G)``, so every term is an r × r
    product; sums run in float64. LoRA's scale multiplies both sides and cancels.
    """
    pb, b64, a64 = projected_b.double(), b.double(), a.double()
    gram_a = a64 @ a64.T

    def inner(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((x.T @ y) * gram_a).sum())

    original_sq = inner(b64, b64)
    if original_sq <= 0.0:
        return 1.0
    projected_sq = inner(pb, pb)
    if projected_sq <= 0.0:
        return 0.0
    return inner(pb, b64) / (projected_sq**0.5 * original_sq**0.5)


def select_for_projection(
    similarities: list[float], *, threshold: float | None = None, num_layers: int | None = None
) -> list[bool]:
    """Which layers to project: similarity ≤ ``threshold``, or the ``num_layers`` least similar.

    Ties at the ``num_layers`` boundary go to the earlier layer, so exactly that many are chosen.
    """
    if (threshold is None) == (num_layers is None):
        raise ValueError("give exactly one of threshold and num_layers")
    if threshold is not None:
        return [s <= threshold for s in similarities]
    assert num_layers is not None
    order = sorted(range(len(similarities)), key=lambda i: (similarities[i], i))
    chosen = set(order[:num_layers])
    return [i in chosen for i in range(len(similarities))]
