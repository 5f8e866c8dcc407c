"""Optimal-Brain-Surgeon recalibration: the SparseGPT sweep, with a fixed or per-block mask.

Problem: a linear layer ``y = W x`` has some entries of ``W`` forced to zero (for IRR, ``W`` is
the fine-tuning delta and zero means "back to the base model"). Move the *other* entries so the
layer output on calibration inputs ``X`` changes as little as possible::

    minimise ||(W' - W) X||²   subject to   W'[mask] = 0

With ``H = (2/n) X Xᵀ`` every row is an independent quadratic problem sharing one ``H``. Removing
one entry ``q`` of a row optimally moves the row by ``-(w_q / [H⁻¹]_qq) · H⁻¹[q, :]`` (the
closed-form OBS update). SparseGPT makes many removals affordable by sweeping the columns left to
right: once column ``j`` is handled it is frozen, so the inverse Hessian of the remaining problem
is needed only for columns ``j..``, and all of those are rows of one upper Cholesky factor ``U``
of ``H⁻¹`` (``H⁻¹ = Uᵀ U``). Updates inside a block of ``block_size`` columns are applied at
once to the rest of the matrix ("lazy batch"), which turns most of the work into one matmul.

Dead inputs (``H_jj = 0``: the feature was never non-zero on the calibration data) carry no
information: their Hessian row is decoupled (``H_jj = 1``), so removing an entry there changes
nothing else and retained entries there are left untouched (``zero_dead_columns=True`` sets
their whole column to 0 before the sweep instead, as SparseGPT and the official IRR code do).

The removal mask is either fixed up front (:func:`obs_recalibrate`) or chosen block by block
inside the sweep (:func:`obs_recalibrate_adaptive`): a callback sees each block of columns
*after* the updates caused by the blocks to its left and returns that block's mask. Both run
the same sweep (:func:`_sweep`), so a callback that returns slices of a fixed mask gives the
fixed-mask result bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from realignkit.errors import InvalidValue


def prepare_hessian(hessian: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """Dead inputs decoupled and ``damping · mean(diag H)`` added to the diagonal (a copy).

    Damping keeps the inverse well conditioned when the calibration data do not span every input
    direction (fewer tokens than features, or correlated features).
    """
    if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
        raise InvalidValue(f"Hessian must be square, got shape {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise InvalidValue("Hessian holds NaN or Inf: the calibration forward pass overflowed")
    hess = hessian.clone()
    diagonal = torch.diagonal(hess)
    dead = diagonal == 0
    hess[dead, :] = 0
    hess[:, dead] = 0
    diagonal[dead] = 1
    diagonal += damping * diagonal.mean()
    return hess


def upper_cholesky_of_inverse(hessian: torch.Tensor) -> torch.Tensor:
    """``U`` upper triangular with ``H⁻¹ = Uᵀ U`` (the rows SparseGPT's sweep reads)."""
    lower, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise InvalidValue(
            "Hessian is not positive definite even after damping; raise the {name}",
            name="damping",
            parameter="damping",
        )
    inverse = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
    if int(info) != 0:
        raise InvalidValue(
            "inverse Hessian is not positive definite; raise the {name}",
            name="damping",
            parameter="damping",
        )
    return upper


BlockChooser = Callable[[int, int, torch.Tensor], torch.Tensor]
"""``(start, end, block) -> mask``: the removal mask (bool, ``(rows, end - start)``) of columns
``start:end``, given those columns of the weight as the sweep has updated them so far."""


def _check_inputs(weight: torch.Tensor, hessian: torch.Tensor) -> None:
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise InvalidValue(
            f"Hessian shape {tuple(hessian.shape)} does not fit a weight with {cols} input columns"
        )


def _sweep(
    work: torch.Tensor, upper: torch.Tensor, choose: BlockChooser, block_size: int
) -> torch.Tensor:
    """SparseGPT's left-to-right sweep on ``work`` (in place); returns the removal mask.

    For each block of ``block_size`` columns, ``choose`` decides the block's removals from its
    current values; each removal moves the columns right of it within the block at once and
    the columns right of the block by one matmul afterwards ("lazy batch").
    """
    rows, cols = work.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=work.device)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block_mask = choose(start, end, work[:, start:end])
        if block_mask.shape != (rows, end - start):
            raise InvalidValue(
                f"block mask shape {tuple(block_mask.shape)} differs from the block "
                f"({rows}, {end - start})"
            )
        block_mask = block_mask.to(device=work.device, dtype=torch.bool)
        mask[:, start:end] = block_mask
        # One host sync per block: columns without any removal need no work at all.
        active = block_mask.any(dim=0).nonzero().flatten().tolist()
        if not active:
            continue
        block = work[:, start:end].clone()
        block_upper = upper[start:end, start:end]
        errors = torch.zeros_like(block)
        for j in active:
            removed = block_mask[:, j]
            # Scaled error of zeroing the removed entries of column j; zero for kept rows.
            err = torch.where(removed, block[:, j] / block_upper[j, j], 0.0)
            block[:, j:] -= err.unsqueeze(1) * block_upper[j, j:].unsqueeze(0)
            block[:, j].masked_fill_(removed, 0.0)
            errors[:, j] = err
        work[:, start:end] = block
        # Lazy batch: the columns right of this block receive all of its updates at once.
        work[:, end:] -= errors @ upper[start:end, end:]
    return mask


def _prepared(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    damping: float,
    compute_dtype: torch.dtype,
    zero_dead_columns: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The working copy of the weight, the damped Hessian and the upper factor of its inverse."""
    work = weight.to(compute_dtype).clone()
    raw = hessian.to(device=work.device, dtype=compute_dtype)
    if zero_dead_columns:
        work[:, torch.diagonal(raw) == 0] = 0.0
    hess = prepare_hessian(raw, damping)
    return work, hess, upper_cholesky_of_inverse(hess)


def obs_recalibrate(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    remove_mask: torch.Tensor,
    *,
    damping: float = 0.01,
    block_size: int = 128,
    compute_dtype: torch.dtype = torch.float32,
    refine_steps: int = 0,
    zero_dead_columns: bool = False,
) -> torch.Tensor:
    """Zero ``weight[remove_mask]`` and compensate with the other entries (a new tensor).

    ``weight`` is ``(out_features, in_features)`` (the orientation of ``nn.Linear``), ``hessian``
    is ``(in, in)`` = ``(2/n) Σ x xᵀ`` over the calibration tokens, ``remove_mask`` is a bool
    tensor shaped like ``weight``. The result has ``compute_dtype``; masked entries are exactly 0.
    ``refine_steps`` > 0 adds :func:`refine` after the sweep (not in SparseGPT or the paper).
    ``zero_dead_columns`` sets the columns of dead inputs (``H_jj = 0``) to 0 first.
    """
    if remove_mask.shape != weight.shape:
        raise InvalidValue(
            f"mask shape {tuple(remove_mask.shape)} differs from weight shape {tuple(weight.shape)}"
        )
    _check_inputs(weight, hessian)
    mask = remove_mask.to(device=weight.device, dtype=torch.bool)
    if not mask.any() and not zero_dead_columns:
        return weight.to(compute_dtype).clone()
    work, hess, upper = _prepared(weight, hessian, damping, compute_dtype, zero_dead_columns)
    start_value = work.clone() if refine_steps > 0 else None  # what refinement stays close to
    mask = mask.to(work.device)
    _sweep(work, upper, lambda start, end, _block: mask[:, start:end], block_size)
    if start_value is not None:
        work = refine(work, start_value, hess, mask, steps=refine_steps)
    return work


def obs_recalibrate_adaptive(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    choose: BlockChooser,
    *,
    damping: float = 0.01,
    block_size: int = 128,
    compute_dtype: torch.dtype = torch.float32,
    refine_steps: int = 0,
    zero_dead_columns: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sweep with each block's removals chosen by ``choose`` on the *updated* block.

    Returns the new weight and the removal mask the callback chose. Options as in
    :func:`obs_recalibrate`; with ``refine_steps`` the refinement keeps the chosen mask.
    """
    _check_inputs(weight, hessian)
    work, hess, upper = _prepared(weight, hessian, damping, compute_dtype, zero_dead_columns)
    start_value = work.clone() if refine_steps > 0 else None
    mask = _sweep(work, upper, choose, block_size)
    if start_value is not None:
        work = refine(work, start_value, hess, mask, steps=refine_steps)
    return work, mask


def refine(
    current: torch.Tensor,
    original: torch.Tensor,
    hessian: torch.Tensor,
    remove_mask: torch.Tensor,
    *,
    steps: int = 20,
) -> torch.Tensor:
    """Conjugate-gradient steps toward the exact optimum of the fixed-mask problem.

    The sweep freezes each column once it is passed, so retained entries left of a removed one
    never help compensate; with a fixed (not adaptively chosen) mask and correlated inputs its
    error can be several times the optimum. Starting from the sweep's answer, each step is one
    matmul for all rows together and never increases ``‖(W' - W) X‖`` on the (damped) ``H``.
    """
    free = (~remove_mask).to(current.dtype)
    solution = current.clone()
    residual = -((solution - original) @ hessian) * free
    direction = residual.clone()
    norm = (residual * residual).sum(dim=1)
    for _ in range(steps):
        product = (direction @ hessian) * free
        curvature = (direction * product).sum(dim=1)
        step = torch.where(curvature > 0, norm / curvature.clamp_min(1e-30), 0.0)
        solution += step.unsqueeze(1) * direction
        residual -= step.unsqueeze(1) * product
        new_norm = (residual * residual).sum(dim=1)
        ratio = torch.where(norm > 0, new_norm / norm.clamp_min(1e-30), 0.0)
        direction = residual + ratio.unsqueeze(1) * direction
        norm = new_norm
    return solution.masked_fill(remove_mask, 0.0)


def output_error(change: torch.Tensor, hessian: torch.Tensor) -> float:
    """Mean squared output change per calibration token, ``‖D X‖² / n = tr(D H Dᵀ) / 2``.

    ``change`` is ``W' - W`` in ``(out, in)`` orientation and ``hessian`` the undamped
    ``(2/n) Σ x xᵀ``; lets a report compare removal with and without recalibration cheaply.
    """
    change = change.to(hessian.dtype)
    return float(((change @ hessian) * change).sum() / 2)
