"""Which delta entries IRR removes: sign conflicts ranked by a score, within a budget unit.

All tensors here are in kernel orientation ``(out_features, in_features)``, so a "block" is 128
consecutive *input* columns, the unit of SparseGPT's sweep and of the official IRR code.

Selection rule: inside each unit (a 128-column block, a whole matrix, or the whole model) the
candidates are the entries whose delta sign conflicts with the safety vector (or every entry
without the sign rule); the ``round(R · #candidates)`` candidates with the highest score are
removed. Ties are broken by position (earlier entry first), so results are deterministic.

The official IRR code differs in three details, each available here as an option:
``zero_is_conflict`` (``sign(δ) ≠ sign(v)``: a zero on either side conflicts with a non-zero
on the other), ``rounding="keep-floor"`` (keep ``⌊n·(1 − R)⌋`` of ``n`` candidates, i.e. the
removed count is rounded up) and ``ties="later"`` (of tied scores at the cut the later entry is
removed: an ascending stable sort, removal from the cut on).

Random scores come from a generator seeded by ``(seed, tensor name)``: the mask of one tensor
never depends on which tensors were processed before it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from realignkit.errors import InvalidValue

BUDGETS = ("block", "matrix", "global")
MASK_KINDS = ("fisher", "magnitude", "random")
TIES = ("earlier", "later")  # which of tied entries at the cut is removed
COUNT_ROUNDINGS = ("half-up", "keep-floor")  # round(R·n) removed, or n − ⌊(1 − R)·n⌋
HIST_BINS = 1 << 16


def sign_conflict(
    delta: torch.Tensor, safety: torch.Tensor, *, zero_is_conflict: bool = False
) -> torch.Tensor:
    """Entries where the fine-tuning delta points against the safety vector (``δ·v < 0``).

    By default zeros never conflict: removing a zero delta is a no-op and would waste budget.
    ``zero_is_conflict`` compares signs instead (``sign(δ) ≠ sign(v)``, the official code's
    rule): ``δ = 0`` against ``v ≠ 0``, or ``δ ≠ 0`` against ``v = 0``, conflicts.
    """
    if delta.shape != safety.shape:
        raise InvalidValue(
            f"safety vector shape {tuple(safety.shape)} differs from delta {tuple(delta.shape)}"
        )
    if zero_is_conflict:
        return torch.sign(delta.float()) != torch.sign(safety.float())
    return (delta.float() * safety.float()) < 0


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator keyed by ``(seed, name)``, stable across runs, machines and orders."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def random_scores(shape: torch.Size | tuple[int, ...], seed: int, name: str) -> torch.Tensor:
    """Uniform scores in [0, 1) for tensor ``name``: a random mask with the same budget."""
    return torch.rand(tuple(shape), generator=tensor_generator(seed, name))


def ranking_scores(
    kind: str,
    *,
    delta: torch.Tensor,
    fisher: torch.Tensor | None = None,
    seed: int = 0,
    name: str = "",
) -> torch.Tensor:
    """The score that orders candidates: Fisher importance, ``|δ|``, or random."""
    if kind == "fisher":
        if fisher is None:
            raise InvalidValue(f"{name}: the fisher mask needs Fisher scores")
        return fisher.float()
    if kind == "magnitude":
        return delta.float().abs()
    if kind == "random":
        return random_scores(delta.shape, seed, name).to(delta.device)
    raise InvalidValue(
        f"unknown {{name}} {kind!r}; use one of {', '.join(MASK_KINDS)}",
        name="mask",
        parameter="mask",
    )


def check_fraction(fraction: float) -> None:
    """R (rho), the share of candidates removed, must be a number in [0, 1]."""
    if not (isinstance(fraction, int | float) and 0.0 <= fraction <= 1.0):
        raise InvalidValue(
            f"{{name}} must be in [0, 1], got {fraction}",
            name="the removal share rho",
            parameter="rho",
        )


def check_choice(
    value: str, choices: tuple[str, ...], name: str, parameter: str | None = None
) -> None:
    """One line naming the valid values of a choice called ``name`` (the declared
    ``parameter`` it comes from, for a front end's own words)."""
    if value not in choices:
        raise InvalidValue(
            f"unknown {{name}} {value!r}; use {', '.join(choices)}", name=name, parameter=parameter
        )


def keep_fraction(fraction: float) -> float:
    """``1 − R`` rounded to 12 decimals, so ``R = 1 − s`` gives back the ``s`` a user typed
    (``1 − 0.7`` is 0.30000000000000004, whose ``⌊n·s⌋`` can differ from that of 0.3)."""
    return round(1.0 - fraction, 12)


def removal_count(fraction: float, candidates: int, *, rounding: str = "half-up") -> int:
    """How many of ``candidates`` are removed: ``round(R · n)`` with halves rounded up, or,
    with ``rounding="keep-floor"``, ``n − ⌊(1 − R) · n⌋`` (the official code keeps the floor).
    Either way R = 1 takes all and R = 0 none."""
    check_choice(rounding, COUNT_ROUNDINGS, "count rounding", "count_rounding")
    if rounding == "keep-floor":
        return candidates - math.floor(keep_fraction(fraction) * candidates)
    return min(candidates, math.floor(fraction * candidates + 0.5))


def _removal_counts(fraction: float, candidates: torch.Tensor, rounding: str) -> torch.Tensor:
    """:func:`removal_count` of every entry of an integer tensor of candidate counts."""
    check_choice(rounding, COUNT_ROUNDINGS, "count rounding", "count_rounding")
    if rounding == "keep-floor":
        return candidates - torch.floor(keep_fraction(fraction) * candidates.double()).long()
    return torch.floor(fraction * candidates.double() + 0.5).long()


def _top_in_rows(
    scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor, ties: str = "earlier"
):
    """Per row of a ``(units, size)`` layout: the ``counts[u]`` best candidates (stable).

    ``ties="later"`` ranks tied scores later entry first; flipping the row order before the
    same stable sort does exactly that.
    """
    check_choice(ties, TIES, "tie rule", "ties")
    if ties == "later":
        flipped = _top_in_rows(scores.flip(1), candidates.flip(1), counts, "earlier")
        return flipped.flip(1)
    ranked = torch.where(candidates, scores.float(), -math.inf)
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return candidates & (rank_of < counts.unsqueeze(1))


def top_fraction_mask(
    scores: torch.Tensor,
    candidates: torch.Tensor,
    fraction: float,
    *,
    budget: str = "block",
    block_size: int = 128,
    ties: str = "earlier",
    rounding: str = "half-up",
) -> torch.Tensor:
    """The removal mask of one matrix for the ``block`` or ``matrix`` budget.

    ``block`` ranks inside each group of ``block_size`` input columns (all rows together), as
    the official code does; ``matrix`` ranks across the whole tensor (row-major order decides
    ties). ``ties`` and ``rounding``: see :data:`TIES`, :func:`removal_count`.
    """
    check_fraction(fraction)
    if scores.shape != candidates.shape:
        raise InvalidValue(
            f"score shape {tuple(scores.shape)} differs from candidates {tuple(candidates.shape)}"
        )
    if budget == "matrix" or scores.ndim < 2:
        flat_scores, flat_cand = scores.reshape(1, -1), candidates.reshape(1, -1)
        count = removal_count(fraction, int(flat_cand.sum()), rounding=rounding)
        counts = torch.tensor([count], device=scores.device)
        return _top_in_rows(flat_scores, flat_cand, counts, ties).reshape(scores.shape)
    if budget != "block":
        raise InvalidValue(
            f"{{name}} {budget!r} is not per-matrix; use block or matrix here",
            name="budget",
            parameter="budget",
        )
    rows, cols = scores.shape
    mask = torch.zeros_like(candidates, dtype=torch.bool)
    full = (cols // block_size) * block_size
    spans = [(0, full, block_size)] if full else []
    if full < cols:
        spans.append((full, cols, cols - full))
    for start, end, width in spans:
        units = (end - start) // width
        # (rows, units, width) -> (units, rows * width): one row per column block.
        unit_scores = scores[:, start:end].reshape(rows, units, width).transpose(0, 1)
        unit_cand = candidates[:, start:end].reshape(rows, units, width).transpose(0, 1)
        unit_scores = unit_scores.reshape(units, -1)
        unit_cand = unit_cand.reshape(units, -1)
        counts = _removal_counts(fraction, unit_cand.sum(dim=1), rounding)
        chosen = _top_in_rows(unit_scores, unit_cand, counts, ties)
        mask[:, start:end] = chosen.reshape(units, rows, width).transpose(0, 1).reshape(rows, -1)
    return mask


# --- global budget: one ranking across every edited tensor, computed in streaming passes ---


def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys that sort like the float32 scores (IEEE bit trick), for exact histograms."""
    bits = scores.float().contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)


def key_histogram(
    scores: torch.Tensor, candidates: torch.Tensor, *, high_bin: int | None = None
) -> torch.Tensor:
    """Counts of candidate keys per bin of their top 16 bits, or, inside ``high_bin``, per bin
    of their low 16 bits. Summed over tensors, two such passes pin down the exact k-th score."""
    keys = order_keys(scores)[candidates]
    bins = keys >> 16 if high_bin is None else keys[(keys >> 16) == high_bin] & 0xFFFF
    return torch.bincount(bins, minlength=HIST_BINS).cpu()


def bin_of_kth_largest(histogram: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest key (1-based) and how many keys lie in higher bins."""
    from_top = histogram.flip(0).cumsum(0)
    if k < 1 or int(from_top[-1]) < k:
        raise InvalidValue(f"cannot take {k} entries from {int(from_top[-1])} candidates")
    position = int((from_top >= k).nonzero()[0])
    index = HIST_BINS - 1 - position
    return index, int(from_top[position]) - int(histogram[index])


@dataclass
class GlobalCutoff:
    """Remove candidates whose key is above ``key``, plus the first ``ties`` equal to it.

    Ties at the cutoff go to tensors in the order the caller visits them (sorted names).
    """

    key: int
    ties: int

    @staticmethod
    def nothing() -> GlobalCutoff:
        return GlobalCutoff(key=1 << 40, ties=0)

    def apply(self, scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The mask of one tensor; consumes ``ties`` as it hands them out."""
        keys = order_keys(scores)
        mask = candidates & (keys > self.key)
        if self.ties > 0:
            tied = (candidates & (keys == self.key)).flatten()
            positions = tied.nonzero().flatten()[: self.ties]
            flat = mask.flatten().clone()
            flat[positions] = True
            mask = flat.reshape(mask.shape)
            self.ties -= len(positions)
        return mask


def global_cutoff(high_histogram: torch.Tensor, low_histogram_of, removals: int) -> GlobalCutoff:
    """The exact cutoff for removing the ``removals`` best candidates of the whole model.

    ``high_histogram`` is the sum of :func:`key_histogram` over every tensor; ``low_histogram_of``
    is a callable ``(high_bin) -> summed low histogram`` (a second streaming pass).
    """
    if removals <= 0:
        return GlobalCutoff.nothing()
    high, above_high = bin_of_kth_largest(high_histogram, removals)
    low_histogram = low_histogram_of(high)
    low, above_low = bin_of_kth_largest(low_histogram, removals - above_high)
    key = (high << 16) | low
    return GlobalCutoff(key=key, ties=removals - above_high - above_low)
