"""Intervals and paired tests against values computed by hand from their formulas."""

from __future__ import annotations

import math

import pytest

from realignkit.eval.stats import (
    Z_95,
    Rate,
    cohen_kappa,
    mcnemar_exact,
    mean_rate_interval,
    paired_bootstrap_interval,
    paired_rate_difference,
    wilson_interval,
)


def test_wilson_matches_the_closed_form_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96·sqrt(0.016 + 0.00960)/1.38416
    low, high = wilson_interval(8, 10, z=1.96)
    centre = (0.8 + 1.96**2 / 20) / (1 + 1.96**2 / 10)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 10 + 1.96**2 / 400) / (1 + 1.96**2 / 10)
    assert low == pytest.approx(centre - half, abs=1e-12)
    assert high == pytest.approx(centre + half, abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook figures


def test_wilson_at_the_edges_stays_in_the_unit_interval():
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 20)[1] == pytest.approx(3.8415 / (20 + 3.8415), abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_rate_carries_n_and_interval():
    rate = Rate(k=3, n=12)
    assert rate.value == 0.25
    assert rate.as_dict()["n"] == 12
    assert "n=12" in str(rate)


def test_mcnemar_exact_is_the_two_sided_binomial_tail():
    # b = 1, c = 9: 2·(C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_paired_rate_difference_counts_discordant_pairs():
    before = [True] * 10 + [False] * 10
    after = [True] * 2 + [False] * 8 + [False] * 9 + [True]
    diff = paired_rate_difference(before, after)
    assert (diff.a_only, diff.b_only) == (8, 1)
    assert diff.difference == pytest.approx(0.15 - 0.5)
    assert diff.p_value == pytest.approx(mcnemar_exact(8, 1))


def test_paired_bootstrap_interval_brackets_a_constant_shift_exactly():
    a = [1.0, 2.0, 3.0, 4.0]
    mean, low, high = paired_bootstrap_interval(a, [x + 0.5 for x in a])
    assert (mean, low, high) == pytest.approx((0.5, 0.5, 0.5))


def test_paired_bootstrap_interval_is_reproducible_and_contains_the_mean():
    a = [0.1 * i for i in range(30)]
    b = [x + (0.2 if i % 3 else -0.1) for i, x in enumerate(a)]
    first = paired_bootstrap_interval(a, b, seed=1)
    assert first == paired_bootstrap_interval(a, b, seed=1)
    mean, low, high = first
    assert low < mean < high


def test_cohen_kappa_against_the_textbook_table():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = 0.2 / 0.5 = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(["x"] * 3, ["x"] * 3) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa(["x"], [])


def test_mean_rate_interval_by_hand():
    one = mean_rate_interval([Rate(8, 10)])
    assert one == (0.8, *wilson_interval(8, 10))
    rates = [Rate(8, 10), Rate(0, 20)]
    mean, low, high = mean_rate_interval(rates)
    halves = [(r.interval[1] - r.interval[0]) / 2 for r in rates]
    sd = math.sqrt(sum((h / Z_95) ** 2 for h in halves)) / 2
    assert mean == pytest.approx(0.4)
    assert (low, high) == pytest.approx((0.4 - Z_95 * sd, 0.4 + Z_95 * sd))
    assert mean_rate_interval([Rate(0, 0)]) is None
