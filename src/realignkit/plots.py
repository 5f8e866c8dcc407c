"""The safety–utility plot, one way for every caller: ``compare``, ``sweep``, ``demo``, benchmarks.

One axis convention everywhere, so two figures read alike side by side: **harmfulness on the
y axis** (the share of harmful prompts answered, 0 to 1; down is safer) and **utility on the
x axis** (right is better, where the utility is an accuracy; a loss reads the other way and
says so in its label). Every point carries its interval as error bars where it has one (95 %
intervals of a rate, or a spread over seeds), and its label beside it.

A figure is one or more :class:`Panel` s side by side (the same points against different
utilities), each holding :class:`Series` (one marker and colour, one legend entry), and it is
written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realignkit.checkpoint.output import atomic_file

HARMFULNESS_LABEL = "harmfulness (share of harmful prompts answered) ↓"
UTILITY_LABEL = "utility (mean accuracy / pass@1) →"
SHARE_LIMITS = (-0.05, 1.05)
"""Axis limits of a share: the whole 0–1 range, with a margin for markers on its edges."""


@dataclass
class Point:
    """One model: its utility ``x``, harmfulness ``y`` and their intervals ``[low, high]``."""

    label: str
    x: float
    y: float
    x_ci: Sequence[float] | None = None
    y_ci: Sequence[float] | None = None


@dataclass
class Series:
    """Points drawn alike; ``name`` is their legend entry (None: not in the legend)."""

    points: list[Point]
    name: str | None = None
    marker: str = "o"
    color: Any = None
    markersize: float = 6


@dataclass
class Panel:
    """One axes: the series against one utility; ``front`` joins the Pareto front's points."""

    series: list[Series]
    x_label: str = UTILITY_LABEL
    x_limits: tuple[float, float] | None = SHARE_LIMITS
    title: str = ""
    front: list[Point] = field(default_factory=list)


def _bars(points: list[Point], values: list[float], key: str) -> Any:
    """Asymmetric error bars (2 × n) from intervals; None when no point has one."""
    import numpy as np

    intervals = [getattr(p, key) for p in points]
    if not any(intervals):
        return None
    low = [v - ci[0] if ci else 0.0 for v, ci in zip(values, intervals, strict=True)]
    high = [ci[1] - v if ci else 0.0 for v, ci in zip(values, intervals, strict=True)]
    return np.clip(np.array([low, high], dtype=float), 0.0, None)


def draw_series(ax: Any, series: Series, *, annotate: bool = True) -> None:
    """A series' points with their intervals as error bars, each labelled beside it."""
    points = series.points
    if not points:
        return
    xs, ys = [p.x for p in points], [p.y for p in points]
    ax.errorbar(
        xs,
        ys,
        xerr=_bars(points, xs, "x_ci"),
        yerr=_bars(points, ys, "y_ci"),
        fmt=series.marker,
        color=series.color,
        markersize=series.markersize,
        capsize=3,
        elinewidth=0.8,
        label=series.name,
        zorder=3,
    )
    if annotate:
        for p in points:
            ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(5, 4), fontsize=7)


def _draw_front(ax: Any, front: list[Point]) -> None:
    ordered = sorted(front, key=lambda p: p.x)
    xs, ys = [p.x for p in ordered], [p.y for p in ordered]
    ax.step(xs, ys, where="post", color="black", linewidth=1.2, linestyle="--", zorder=2)
    ax.plot([], [], color="black", linewidth=1.2, linestyle="--", label="Pareto front")
    ax.scatter(xs, ys, s=140, facecolors="none", edgecolors="black", zorder=4)


def save_figure(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    """Write a matplotlib figure atomically (PNG) and close it."""
    import matplotlib.pyplot as plt

    out = Path(out_png)
    try:
        with atomic_file(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out


def plot_safety_utility(
    panels: Panel | Sequence[Panel],
    out_png: str | os.PathLike[str],
    *,
    title: str = "",
    panel_size: tuple[float, float] = (6.5, 5.0),
) -> Path:
    """Draw the panels side by side in one figure and write it to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [panels] if isinstance(panels, Panel) else list(panels)
    width, height = panel_size
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), dpi=120)
    for ax, panel in zip([axes] if len(panels) == 1 else axes, panels, strict=True):
        for series in panel.series:
            draw_series(ax, series)
        if panel.front:
            _draw_front(ax, panel.front)
        ax.set_xlabel(panel.x_label)
        ax.set_ylabel(HARMFULNESS_LABEL)
        if panel.x_limits is not None:
            ax.set_xlim(*panel.x_limits)
        ax.set_ylim(*SHARE_LIMITS)
        ax.grid(alpha=0.3)
        if panel.title:
            ax.set_title(panel.title, fontsize=10)
        if any(s.name for s in panel.series) or panel.front:
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png)
