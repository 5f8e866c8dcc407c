"""Statistics that make a report's numbers evidence: intervals and paired tests.

Pure functions of counts and paired samples (no I/O). Every rate a report prints goes through
:func:`rate_with_interval`; ``compare`` uses :func:`mcnemar_exact` for paired rates over the same
prompts and :func:`paired_bootstrap_interval` for paired continuous utilities (NLL, accuracy).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (Wilson 1927); (0, 1) when ``n`` is 0.

    Unlike the normal approximation it stays inside [0, 1] and keeps its coverage at rates near
    0 or 1, which is where safety figures live (a refusal rate of 98 %).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A rate with its sample size and 95 % Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def as_dict(self) -> dict[str, float | int | None | list[float]]:
        low, high = self.interval
        return {"value": self.value, "k": self.k, "n": self.n, "ci95": [low, high]}

    def __str__(self) -> str:
        if not self.n:
            return "– (n=0)"
        low, high = self.interval
        return f"{100 * self.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={self.n})"


def rate_with_interval(flags: Sequence[bool]) -> Rate:
    """The share of true flags, as a :class:`Rate`."""
    return Rate(k=sum(bool(f) for f in flags), n=len(flags))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes.

    ``b`` and ``c`` are the discordant counts (yes→no and no→yes over the same prompts); under
    the null each discordant pair goes either way with probability ½, so the p-value is the
    two-sided binomial tail of min(b, c) in Binomial(b + c, ½), capped at 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedRateDifference:
    """Rate of B minus rate of A over the same items, with the exact McNemar p-value."""

    n: int
    rate_a: float
    rate_b: float
    a_only: int  # items flagged under A but not under B
    b_only: int  # items flagged under B but not under A
    p_value: float

    @property
    def difference(self) -> float:
        return self.rate_b - self.rate_a


def paired_rate_difference(
    flags_a: Sequence[bool], flags_b: Sequence[bool]
) -> PairedRateDifference:
    """Compare two binary outcomes on the same items (e.g. 'harmful' before and after)."""
    if len(flags_a) != len(flags_b):
        raise ValueError(f"paired samples differ in length: {len(flags_a)} vs {len(flags_b)}")
    n = len(flags_a)
    a_only = sum(1 for a, b in zip(flags_a, flags_b, strict=True) if a and not b)
    b_only = sum(1 for a, b in zip(flags_a, flags_b, strict=True) if b and not a)
    rate_a = sum(map(bool, flags_a)) / n if n else 0.0
    rate_b = sum(map(bool, flags_b)) / n if n else 0.0
    return PairedRateDifference(n, rate_a, rate_b, a_only, b_only, mcnemar_exact(a_only, b_only))


def paired_bootstrap_interval(
    values_a: Sequence[float],
    values_b: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of (b − a) over paired items and its percentile bootstrap interval.

    Items are resampled with replacement as pairs, so the interval accounts for the items both
    measurements share (the same GSM8K problems before and after). Returns (mean, low, high).
    """
    if len(values_a) != len(values_b):
        raise ValueError(f"paired samples differ in length: {len(values_a)} vs {len(values_b)}")
    if not values_a:
        raise ValueError("paired bootstrap needs at least one pair")
    diffs = [float(b) - float(a) for a, b in zip(values_a, values_b, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    alpha = (1 - confidence) / 2
    low = means[int(math.floor(alpha * (resamples - 1)))]
    high = means[int(math.ceil((1 - alpha) * (resamples - 1)))]
    return sum(diffs) / n, low, high


def mean_rate_interval(rates: Sequence[Rate], z: float = Z_95) -> tuple[float, float, float] | None:
    """Mean of several independent rates and an approximate 95 % interval; None if none measured.

    One rate gives its own Wilson interval. For several, each rate's variance is read from its
    Wilson half-width, ((high - low) / 2z)², so a rate of 0 or 1 still has a width; the mean's
    variance is their sum over m², and the interval is mean ± z·sd, clipped to [0, 1].
    """
    measured = [r for r in rates if r.n]
    if not measured:
        return None
    if len(measured) == 1:
        low, high = measured[0].interval
        return float(measured[0].value), low, high
    m = len(measured)
    mean = sum(float(r.value) for r in measured) / m
    variance = sum(((r.interval[1] - r.interval[0]) / (2 * z)) ** 2 for r in measured) / m**2
    half = z * math.sqrt(variance)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def cohen_kappa(labels_a: Sequence[object], labels_b: Sequence[object]) -> float | None:
    """Cohen's κ of two raters over the same items (any hashable labels); None when undefined.

    κ = (p_o − p_e) / (1 − p_e) with p_o the observed agreement and p_e the agreement expected
    from each rater's label frequencies. Undefined (None) with no items, or when both raters give
    one and the same label to everything (p_e = 1).
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"paired labels differ in length: {len(labels_a)} vs {len(labels_b)}")
    n = len(labels_a)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(labels_a, labels_b, strict=True)) / n
    categories = set(labels_a) | set(labels_b)
    expected = sum(
        (sum(a == c for a in labels_a) / n) * (sum(b == c for b in labels_b) / n)
        for c in categories
    )
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)
