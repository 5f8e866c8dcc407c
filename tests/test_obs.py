"""The OBS / SparseGPT recalibration kernel against float64 references on random problems."""

from __future__ import annotations

import pytest
import torch

from realignkit.errors import RealignError
from realignkit.ops.obs import obs_recalibrate, output_error, prepare_hessian

F64 = torch.float64


def problem(rows: int, cols: int, tokens: int, seed: int = 0, mixing: float = 0.5):
    """Weights and calibration inputs whose features are correlated (as activations are);
    ``mixing`` 0.5 gives a Hessian condition number near 20, 3 near 2e4."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen, dtype=F64)
    inputs = torch.randn(cols, tokens, generator=gen, dtype=F64)
    noise = torch.randn(cols, cols, generator=gen, dtype=F64) / cols**0.5
    inputs = (torch.eye(cols, dtype=F64) + mixing * noise) @ inputs
    hessian = 2.0 / tokens * inputs @ inputs.T
    return weight, inputs, hessian


def least_squares_optimum(weight, inputs, mask):
    """min ||(W' - W) X|| subject to W'[mask] = 0: one least-squares problem per row."""
    optimum = torch.zeros_like(weight)
    for r in range(weight.shape[0]):
        free = ~mask[r]
        target = (weight[r] @ inputs).unsqueeze(1)
        optimum[r, free] = torch.linalg.lstsq(inputs[free].T, target).solution.squeeze(1)
    return optimum


def sq_error(change: torch.Tensor, inputs: torch.Tensor) -> float:
    return float(((change @ inputs) ** 2).sum())


@pytest.mark.parametrize("column", [0, 37, 140])
def test_one_removal_is_the_closed_form_obs_update(column):
    weight, _, hessian = problem(rows=6, cols=160, tokens=400)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[2, column] = True
    result = obs_recalibrate(weight, hessian, mask, compute_dtype=F64)

    # Closed form: removing w_q moves the row by -(w_q / [H⁻¹]_qq) H⁻¹[q, :]. SparseGPT has
    # frozen the columns left of q, so the inverse is that of the trailing sub-problem (for
    # q = 0 this is the textbook update over the whole row).
    damped = prepare_hessian(hessian, 0.01)
    inverse = torch.linalg.inv(damped[column:, column:])
    expected = weight.clone()
    expected[2, column:] -= weight[2, column] / inverse[0, 0] * inverse[0, :]
    assert result[2, column] == 0.0
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    if column == 0:
        full_inverse = torch.linalg.inv(damped)
        textbook = weight[2] - weight[2, 0] / full_inverse[0, 0] * full_inverse[0]
        torch.testing.assert_close(result[2], textbook, rtol=0, atol=1e-12)

    fp32 = obs_recalibrate(weight.float(), hessian.float(), mask)
    torch.testing.assert_close(fp32.double(), expected, rtol=1e-4, atol=1e-4)


def test_many_removals_follow_the_sequential_obs_reference():
    """The lazy-batch kernel equals column-by-column OBS with frozen prefixes (SparseGPT)."""
    weight, _, hessian = problem(rows=12, cols=150, tokens=600, seed=8, mixing=1.0)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(9)) < 0.3
    damped = prepare_hessian(hessian, 0.01)
    expected = weight.clone()
    for col in range(weight.shape[1]):
        inverse = torch.linalg.inv(damped[col:, col:])
        for row in mask[:, col].nonzero().flatten().tolist():
            expected[row, col:] -= expected[row, col] / inverse[0, 0] * inverse[0, :]
    expected[mask] = 0.0
    result = obs_recalibrate(weight, hessian, mask, compute_dtype=F64)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-9)


def test_many_removals_beat_plain_removal_and_approach_least_squares():
    weight, inputs, hessian = problem(rows=24, cols=96, tokens=3000, seed=1, mixing=0.5)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(2)) < 0.25
    result = obs_recalibrate(weight.float(), hessian.float(), mask).double()
    assert bool((result[mask] == 0).all())
    err_obs = sq_error(result - weight, inputs)
    err_plain = sq_error(weight.masked_fill(mask, 0.0) - weight, inputs)
    err_opt = sq_error(least_squares_optimum(weight, inputs, mask) - weight, inputs)
    # Measured: obs/opt 1.24, opt/plain 0.71. The sweep never lets columns left of a removed
    # entry compensate, so with a fixed mask it is close to, not at, the optimum.
    assert err_opt <= err_obs * (1 + 1e-9)
    assert err_obs < 0.9 * err_plain
    assert err_obs < 1.3 * err_opt, (err_obs, err_opt, err_plain)


def test_refinement_reaches_the_least_squares_optimum_on_ill_conditioned_inputs():
    weight, inputs, hessian = problem(rows=24, cols=96, tokens=3000, seed=1, mixing=3.0)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(2)) < 0.25
    err_opt = sq_error(least_squares_optimum(weight, inputs, mask) - weight, inputs)
    sweep = obs_recalibrate(weight.float(), hessian.float(), mask).double()
    refined = obs_recalibrate(weight.float(), hessian.float(), mask, refine_steps=30).double()
    assert bool((refined[mask] == 0).all())
    err_sweep = sq_error(sweep - weight, inputs)
    err_refined = sq_error(refined - weight, inputs)
    # Measured: sweep 2.86x the optimum, refined 1.015x (the rest is the damping).
    assert err_refined < 0.5 * err_sweep
    assert err_refined < 1.03 * err_opt, (err_refined, err_opt)


def test_lazy_batches_do_not_change_the_result():
    weight, _, hessian = problem(rows=10, cols=70, tokens=300, seed=3)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(4)) < 0.3
    reference = obs_recalibrate(weight, hessian, mask, block_size=1, compute_dtype=F64)
    for block_size in (7, 32, 128):
        result = obs_recalibrate(weight, hessian, mask, block_size=block_size, compute_dtype=F64)
        torch.testing.assert_close(result, reference, rtol=0, atol=1e-10)


def test_dead_inputs_are_left_alone():
    weight, inputs, _ = problem(rows=8, cols=20, tokens=500, seed=5)
    dead = [3, 11]
    inputs[dead] = 0.0
    hessian = 2.0 / inputs.shape[1] * inputs @ inputs.T
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(6)) < 0.3
    mask[0, 3] = True
    mask[1, 3] = False
    result = obs_recalibrate(weight, hessian, mask, damping=0.0, compute_dtype=F64)
    assert torch.isfinite(result).all()
    for col in dead:
        expected = weight[:, col].masked_fill(mask[:, col], 0.0)
        torch.testing.assert_close(result[:, col], expected, rtol=0, atol=0)
    # The live columns behave as if the dead inputs did not exist.
    alive = [c for c in range(20) if c not in dead]
    reduced = obs_recalibrate(
        weight[:, alive], hessian[alive][:, alive], mask[:, alive], damping=0.0, compute_dtype=F64
    )
    torch.testing.assert_close(result[:, alive], reduced, rtol=0, atol=1e-10)


def test_nothing_removed_changes_nothing():
    weight, _, hessian = problem(rows=4, cols=12, tokens=100)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    torch.testing.assert_close(obs_recalibrate(weight, hessian, mask, compute_dtype=F64), weight)


def test_output_error_is_mean_squared_output_change():
    weight, inputs, hessian = problem(rows=5, cols=9, tokens=50)
    change = 0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    expected = sq_error(change, inputs) / inputs.shape[1]
    assert output_error(change, hessian) == pytest.approx(expected, rel=1e-10)


def test_bad_shapes_are_refused():
    weight, _, hessian = problem(rows=4, cols=12, tokens=100)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    with pytest.raises(RealignError, match="Hessian shape"):
        obs_recalibrate(weight, hessian[:5, :5], mask)
    with pytest.raises(RealignError, match="mask shape"):
        obs_recalibrate(weight, hessian, mask[:, :3])
    with pytest.raises(RealignError, match="NaN"):
        obs_recalibrate(weight, hessian * float("nan"), ~mask)
