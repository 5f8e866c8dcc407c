"""Report folders: per-row JSONL, ``summary.json``, ``summary.md``; comparison and plot.

A report folder holds::

    summary.json        the dict that :func:`realignkit.eval.evaluate` returns
    summary.md          the same as tables
    rows/<bench>.jsonl  one line per prompt (and sample): prompt, response, verdict, category...
    cache/              generations and verdicts, reused by reruns

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from realignkit.errors import RealignError
from realignkit.eval.scoring import primary_metrics

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def rows_filename(benchmark: str) -> str:
    """A file name for a benchmark spec (paths shortened, a hash keeps them unique)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", benchmark):
        return f"{benchmark}.jsonl"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(benchmark.split(":", 1)[-1]).stem).strip("_")
    kind = benchmark.split(":", 1)[0] if ":" in benchmark else "data"
    digest = hashlib.sha1(benchmark.encode()).hexdigest()[:8]
    return f"{kind}_{stem[:40]}_{digest}.jsonl"


def write_rows(out_dir: Path, benchmark: str, rows: list[dict[str, Any]]) -> Path:
    """The per-row JSONL of one benchmark."""
    path = out_dir / "rows" / rows_filename(benchmark)
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    _atomic_write(path, text)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the settings, one table of headline metrics, per-category tables."""
    lines = [f"# Evaluation of {summary.get('name', summary.get('model'))}", ""]
    for key in ("model", "adapter", "judge", "backend", "system_prompt"):
        if summary.get(key):
            value = str(summary[key])
            lines.append(f"- {key}: `{value[:80] + '…' if len(value) > 80 else value}`")
    settings = summary.get("settings", {})
    if settings:
        lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    lines += ["", "| benchmark | kind | n | metric | value |", "| --- | --- | --- | --- | --- |"]
    for name, metrics in summary.get("metrics", {}).items():
        for metric, value in primary_metrics(metrics).items():
            lines.append(
                f"| {name} | {metrics['kind']} | {metrics['n']} | {metric} | {_fmt(value)} |"
            )
        for key, value in metrics.items():
            if key.startswith("pass@") and key != "pass@1":
                lines.append(
                    f"| {name} | {metrics['kind']} | {metrics['n']} | {key} | {_fmt(value)} |"
                )
        if "isolation" in metrics:  # HumanEval: the sandbox its code ran in
            lines.append(
                f"| {name} | {metrics['kind']} | {metrics['n']} | isolation | "
                f"{metrics['isolation']} |"
            )
    scores = summary.get("scores", {})
    if scores:
        lines += [
            "",
            "Overall (means over benchmarks): "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in scores.items()),
        ]
    for name, metrics in summary.get("metrics", {}).items():
        groups = metrics.get("by_category")
        if not groups:
            continue
        metric = next(k for k in next(iter(groups.values())) if k != "n")
        lines += [
            "",
            f"## {name}: {metric} by category",
            "",
            f"| category | n | {metric} |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {c} | {g['n']} | {_fmt(g[metric])} |" for c, g in groups.items()]
    if summary.get("lm_eval"):
        lines += [
            "",
            "## lm-evaluation-harness",
            "",
            "```json",
            json.dumps(summary["lm_eval"], indent=2, default=str),
            "```",
        ]
    return "\n".join(lines) + "\n"


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` and ``summary.md``."""
    _atomic_write(out_dir / SUMMARY_JSON, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(out_dir / SUMMARY_MD, summary_markdown(summary))


def load_summary(report: str | os.PathLike[str]) -> dict[str, Any]:
    """A report's summary, from its folder or its ``summary.json``."""
    path = Path(report)
    if path.is_dir():
        path = path / SUMMARY_JSON
    if not path.is_file():
        raise RealignError(f"{str(report)!r} is not a report folder (no {SUMMARY_JSON})")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RealignError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(summary, dict) or "metrics" not in summary:
        raise RealignError(f"{path}: not a realignkit summary (no 'metrics')")
    summary.setdefault("name", path.parent.name)
    return summary


def compare_table(summaries: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: one row per report, one column per (benchmark, headline metric)."""
    columns: list[tuple[str, str]] = []
    for summary in summaries:
        for bench, metrics in summary["metrics"].items():
            for metric in primary_metrics(metrics):
                if (bench, metric) not in columns:
                    columns.append((bench, metric))
    header = ["model"] + [f"{b} {m}" for b, m in columns] + ["safety", "utility"]
    rows = []
    for summary in summaries:
        row: list[Any] = [summary.get("name")]
        row += [summary["metrics"].get(b, {}).get(m) for b, m in columns]
        scores = summary.get("scores", {})
        row += [scores.get("safety"), scores.get("utility")]
        rows.append(row)
    return header, rows


def compare_markdown(summaries: list[dict[str, Any]]) -> str:
    """The side-by-side table as markdown."""
    header, rows = compare_table(summaries)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_safety_utility(summaries: list[dict[str, Any]], out_png: str | os.PathLike[str]) -> Path:
    """Scatter of safety (1 - mean harmfulness) against utility, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (s["name"], s.get("scores", {}).get("utility"), s.get("scores", {}).get("safety"))
        for s in summaries
    ]
    missing = [name for name, x, y in points if x is None or y is None]
    points = [(n, x, y) for n, x, y in points if x is not None and y is not None]
    if missing:
        log.warning("not plotted (no safety or utility benchmark): %s", ", ".join(missing))
    if not points:
        raise RealignError("nothing to plot: no report has both a safety and a utility metric")
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, x, y in points:
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("utility (mean accuracy / pass@1)")
    ax.set_ylabel("safety (1 − mean harmfulness)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("Safety versus utility")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out
