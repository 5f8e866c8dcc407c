"""IRR's identification masks against plain-Python reference selections."""

from __future__ import annotations

import math

import pytest
import torch

from realignkit.errors import RealignError
from realignkit.ops.masks import (
    check_fraction,
    global_cutoff,
    key_histogram,
    order_keys,
    random_scores,
    ranking_scores,
    removal_count,
    sign_conflict,
    top_fraction_mask,
)


def reference_top(scores: list[float], candidates: list[bool], fraction: float) -> set[int]:
    """Indices of the round-half-up(R·m) best candidates; ties go to the earlier index."""
    pool = [i for i, c in enumerate(candidates) if c]
    count = math.floor(fraction * len(pool) + 0.5)
    pool.sort(key=lambda i: (-scores[i], i))
    return set(pool[:count])


def quantised(shape, seed):
    """Scores with many ties, so tie-breaking is exercised."""
    return torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(seed)).float()


def random_candidates(shape, seed, p=0.5):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


def test_sign_conflict_ignores_zeros():
    delta = torch.tensor([1.0, -2.0, 0.0, 3.0, -1.0])
    safety = torch.tensor([-1.0, -1.0, 5.0, 0.0, 2.0])
    assert sign_conflict(delta, safety).tolist() == [True, False, False, False, True]
    with pytest.raises(RealignError, match="shape"):
        sign_conflict(delta, safety[:3])


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_block_budget_matches_reference(fraction):
    rows, cols, width = 5, 11, 4  # blocks of 4, 4 and 3 columns
    scores, cand = quantised((rows, cols), 1), random_candidates((rows, cols), 2)
    mask = top_fraction_mask(scores, cand, fraction, budget="block", block_size=width)
    for start in range(0, cols, width):
        end = min(start + width, cols)
        # Row-major order inside the block defines "earlier".
        positions = [(r, c) for r in range(rows) for c in range(start, end)]
        chosen = reference_top(
            [float(scores[p]) for p in positions], [bool(cand[p]) for p in positions], fraction
        )
        expected = {positions[i] for i in chosen}
        got = {(r, c) for r, c in mask[:, start:end].nonzero().tolist()}
        got = {(r, c + start) for r, c in got}
        assert got == expected


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_matrix_budget_matches_reference(fraction):
    scores, cand = quantised((6, 9), 3), random_candidates((6, 9), 4)
    mask = top_fraction_mask(scores, cand, fraction, budget="matrix")
    expected = reference_top(scores.flatten().tolist(), cand.flatten().tolist(), fraction)
    assert set(mask.flatten().nonzero().flatten().tolist()) == expected


def test_rho_one_removes_every_candidate_and_zero_none():
    scores, cand = torch.rand(7, 300), random_candidates((7, 300), 5)
    for budget in ("block", "matrix"):
        assert torch.equal(top_fraction_mask(scores, cand, 1.0, budget=budget), cand)
        assert not top_fraction_mask(scores, cand, 0.0, budget=budget).any()


def test_block_budget_removes_the_share_of_each_block():
    scores, cand = torch.rand(16, 256), random_candidates((16, 256), 6)
    mask = top_fraction_mask(scores, cand, 0.5, budget="block", block_size=128)
    for start in (0, 128):
        m = int(cand[:, start : start + 128].sum())
        assert int(mask[:, start : start + 128].sum()) == removal_count(0.5, m)
    assert not (mask & ~cand).any()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_fraction_outside_unit_interval_is_refused(bad):
    with pytest.raises(RealignError, match="rho"):
        check_fraction(bad)
    with pytest.raises(RealignError, match="rho"):
        top_fraction_mask(torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool), bad)


def test_random_scores_depend_on_seed_and_name_only():
    a = random_scores((4, 5), 0, "layers.0.q.weight")
    assert torch.equal(a, random_scores((4, 5), 0, "layers.0.q.weight"))
    assert not torch.equal(a, random_scores((4, 5), 0, "layers.0.k.weight"))
    assert not torch.equal(a, random_scores((4, 5), 1, "layers.0.q.weight"))
    torch.manual_seed(123)  # the global generator plays no part
    first = [random_scores((3, 3), 7, n) for n in ("a", "b", "c")]
    second = [random_scores((3, 3), 7, n) for n in ("c", "a", "b")]
    assert torch.equal(first[0], second[1]) and torch.equal(first[2], second[0])


def test_ranking_scores_kinds():
    delta = torch.tensor([[-3.0, 1.0], [0.5, -0.1]])
    fisher = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    assert torch.equal(ranking_scores("fisher", delta=delta, fisher=fisher), fisher)
    assert torch.equal(ranking_scores("magnitude", delta=delta), delta.abs())
    rand = ranking_scores("random", delta=delta, seed=3, name="w")
    assert torch.equal(rand, random_scores((2, 2), 3, "w"))
    with pytest.raises(RealignError):
        ranking_scores("fisher", delta=delta)
    with pytest.raises(RealignError, match="unknown mask"):
        ranking_scores("entropy", delta=delta)


def test_order_keys_sort_like_floats():
    values = torch.tensor([-1e30, -2.5, -1.0, -1e-20, 0.0, 1e-30, 1.0, 1.5, 3e38])
    keys = order_keys(values)
    assert bool((keys[1:] > keys[:-1]).all())
    assert int(keys.min()) >= 0 and int(keys.max()) < 2**32


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_global_budget_matches_reference(fraction):
    shapes = [(4, 6), (3, 8), (5, 5)]
    # Few distinct values (with near-equal ones) so the cutoff lands inside ties.
    scores = [quantised(s, 10 + i) * 1e-3 + (i == 1) * 1e-9 for i, s in enumerate(shapes)]
    cands = [random_candidates(s, 20 + i) for i, s in enumerate(shapes)]
    total = sum(int(c.sum()) for c in cands)
    high = sum(key_histogram(s, c) for s, c in zip(scores, cands, strict=True))

    def low(high_bin):
        pairs = zip(scores, cands, strict=True)
        return sum(key_histogram(s, c, high_bin=high_bin) for s, c in pairs)

    cutoff = global_cutoff(high, low, removal_count(fraction, total))
    masks = [cutoff.apply(s, c) for s, c in zip(scores, cands, strict=True)]
    flat_scores = [float(x) for s in scores for x in s.flatten()]
    flat_cands = [bool(x) for c in cands for x in c.flatten()]
    expected = reference_top(flat_scores, flat_cands, fraction)
    got, offset = set(), 0
    for m in masks:
        got |= {offset + i for i in m.flatten().nonzero().flatten().tolist()}
        offset += m.numel()
    assert got == expected
