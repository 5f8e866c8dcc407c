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

from realignkit.checkpoint.output import write_json_atomic, write_jsonl_atomic, write_text_atomic
from realignkit.errors import RealignError
from realignkit.eval.scoring import is_harmful, is_refused, primary_metrics
from realignkit.eval.stats import paired_bootstrap_interval, paired_rate_difference

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


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
    return write_jsonl_atomic(out_dir / "rows" / rows_filename(benchmark), rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _interval(ci: Any) -> str:
    if not ci:
        return "–"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the settings, warnings, every rate with its n and 95 % interval, and
    per-category tables."""
    lines = [f"# Evaluation of {summary.get('name', summary.get('model'))}", ""]
    for key in ("model", "adapter", "judge", "backend", "system_prompt"):
        if summary.get(key):
            value = str(summary[key])
            lines.append(f"- {key}: `{value[:80] + '…' if len(value) > 80 else value}`")
    settings = summary.get("settings", {})
    if settings:
        lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    for warning in summary.get("warnings", []):
        lines += ["", f"> **Warning** {warning}"]
    lines += [
        "",
        "| benchmark | kind | metric | value | 95 % CI | n |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, metrics in summary.get("metrics", {}).items():
        rates = metrics.get("rates", {})
        shown = list(rates) + [k for k in primary_metrics(metrics) if k not in rates]
        shown += [k for k in metrics if k.startswith("pass@") and k not in shown]
        for metric in shown:
            entry = rates.get(metric, {})
            value = metrics.get(metric, entry.get("value"))
            n = entry.get("n", metrics.get("n"))
            lines.append(
                f"| {name} | {metrics.get('kind')} | {metric} | {_fmt(value)} | "
                f"{_interval(entry.get('ci95'))} | {n} |"
            )
        if "isolation" in metrics:  # HumanEval: the sandbox its code ran in
            lines.append(
                f"| {name} | {metrics.get('kind')} | isolation | {metrics['isolation']} | – | "
                f"{metrics.get('n')} |"
            )
    scores = summary.get("scores", {})
    if scores:
        intervals = scores.get("ci95", {})
        parts = [
            f"{k} {_fmt(v)}" + (f" {_interval(intervals[k])}" if k in intervals else "")
            for k, v in scores.items()
            if k != "ci95" and not isinstance(v, dict)
        ]
        lines += ["", "Overall (means over benchmarks, approximate 95 % CI): " + ", ".join(parts)]
    for name, metrics in summary.get("metrics", {}).items():
        groups = metrics.get("by_category")
        if not groups:
            continue
        metric = next(k for k in next(iter(groups.values())) if k not in ("n", "ci95"))
        lines += [
            "",
            f"## {name}: {metric} by category",
            "",
            f"| category | n | {metric} | 95 % CI |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {c} | {g['n']} | {_fmt(g[metric])} | {_interval(g.get('ci95'))} |"
            for c, g in groups.items()
        ]
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
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    write_text_atomic(out_dir / SUMMARY_MD, summary_markdown(summary))


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
    """Harmfulness against utility, one labelled point per model, with 95 % intervals as
    error bars where the reports carry them (:mod:`realignkit.plots`' axes)."""
    from realignkit import plots

    series, missing = [], []
    for i, s in enumerate(summaries):
        scores = s.get("scores", {})
        x, y = scores.get("utility"), scores.get("harmfulness")
        if x is None or y is None:
            missing.append(s["name"])
            continue
        intervals = scores.get("ci95", {})
        point = plots.Point(s["name"], x, y, intervals.get("utility"), intervals.get("harmfulness"))
        series.append(plots.Series([point], color=f"C{i % 10}"))  # a colour of its own per model
    if missing:
        log.warning("not plotted (no safety or utility benchmark): %s", ", ".join(missing))
    if not series:
        raise RealignError("nothing to plot: no report has both a safety and a utility metric")
    panel = plots.Panel(series, title="Safety versus utility (bars: 95 % intervals)")
    return plots.plot_safety_utility(panel, out_png, panel_size=(6.0, 4.5))


# --- paired comparison ---------------------------------------------------------------------------


def read_rows_file(report: str | os.PathLike[str], benchmark: str) -> list[dict[str, Any]] | None:
    """The per-row records of one benchmark of a report folder (None when it has none)."""
    folder = Path(report)
    if folder.is_file():
        folder = folder.parent
    path = folder / "rows" / rows_filename(benchmark)
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("index"), row.get("sample", 0), row.get("prompt"))


# What each kind of benchmark pairs: (metric, which rows, the flag or value per row, test).
_PAIRED_RATES = {
    "harmful": [("harmfulness", None, is_harmful)],
    "benign": [("over_refusal", None, is_refused)],
    "xstest": [("harmfulness", "unsafe", is_harmful), ("over_refusal", "safe", is_refused)],
}
_PAIRED_VALUES = {
    "gsm8k": ("accuracy", lambda r: float(bool(r["correct"]))),
    "qa": ("accuracy", lambda r: float(bool(r["correct"]))),
    "humaneval": ("pass@1", lambda r: float(bool(r["passed"]))),
}


def paired_differences(
    report_a: str | os.PathLike[str],
    summary_a: dict[str, Any],
    report_b: str | os.PathLike[str],
    summary_b: dict[str, Any],
) -> list[dict[str, Any]]:
    """B − A per benchmark and metric over the prompts both reports answered.

    Rates (harmfulness, over-refusal) get the exact McNemar p-value of the discordant prompts;
    utilities (accuracy, pass@1 per sample, and NLL where a benchmark keeps per-item values under
    ``per_item``) get the mean paired difference with a 95 % paired bootstrap interval.
    """
    out: list[dict[str, Any]] = []
    for bench, metrics_a in summary_a.get("metrics", {}).items():
        metrics_b = summary_b.get("metrics", {}).get(bench)
        if not metrics_b or metrics_a.get("kind") != metrics_b.get("kind"):
            continue
        kind = metrics_a.get("kind")
        base = {"benchmark": bench, "a": summary_a.get("name"), "b": summary_b.get("name")}
        if kind == "nll" and metrics_a.get("per_item") and metrics_b.get("per_item"):
            values_a, values_b = metrics_a["per_item"], metrics_b["per_item"]
            if len(values_a) == len(values_b):
                mean, low, high = paired_bootstrap_interval(values_a, values_b)
                out.append(
                    base
                    | {
                        "metric": "nll",
                        "n": len(values_a),
                        "value_a": sum(values_a) / len(values_a),
                    }
                    | {"value_b": sum(values_b) / len(values_b), "difference": mean}
                    | {"ci95": [low, high], "test": "paired bootstrap"}
                )
            continue
        rows_a, rows_b = read_rows_file(report_a, bench), read_rows_file(report_b, bench)
        if rows_a is None or rows_b is None:
            continue
        by_key_b = {_row_key(r): r for r in rows_b}
        paired = [(r, by_key_b[_row_key(r)]) for r in rows_a if _row_key(r) in by_key_b]
        if not paired:
            continue
        for metric, label, flag in _PAIRED_RATES.get(kind, []):
            chosen = [(a, b) for a, b in paired if label is None or a.get("label") == label]
            if not chosen:
                continue
            diff = paired_rate_difference(
                [flag(a) for a, _ in chosen], [flag(b) for _, b in chosen]
            )
            out.append(
                base
                | {"metric": metric, "n": diff.n, "value_a": diff.rate_a, "value_b": diff.rate_b}
                | {"difference": diff.difference, "a_only": diff.a_only, "b_only": diff.b_only}
                | {"p_value": diff.p_value, "test": "exact McNemar"}
            )
        if kind in _PAIRED_VALUES:
            metric, value = _PAIRED_VALUES[kind]
            values_a = [value(a) for a, _ in paired]
            values_b = [value(b) for _, b in paired]
            mean, low, high = paired_bootstrap_interval(values_a, values_b)
            out.append(
                base
                | {"metric": metric, "n": len(paired), "value_a": sum(values_a) / len(paired)}
                | {"value_b": sum(values_b) / len(paired), "difference": mean}
                | {"ci95": [low, high], "test": "paired bootstrap"}
            )
        if all("nll" in a and "nll" in b for a, b in paired):
            values_a = [float(a["nll"]) for a, _ in paired]
            values_b = [float(b["nll"]) for _, b in paired]
            mean, low, high = paired_bootstrap_interval(values_a, values_b)
            out.append(
                base
                | {"metric": "nll", "n": len(paired), "value_a": sum(values_a) / len(paired)}
                | {"value_b": sum(values_b) / len(paired), "difference": mean}
                | {"ci95": [low, high], "test": "paired bootstrap"}
            )
    return out


def paired_markdown(differences: list[dict[str, Any]]) -> str:
    """The paired differences as a markdown table (empty string when there are none)."""
    if not differences:
        return ""
    lines = [
        "",
        "Paired differences (B − A) over the same prompts:",
        "",
        "| A | B | benchmark | metric | n | A | B | B − A | evidence |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in differences:
        if "p_value" in d:
            evidence = (
                f"McNemar p = {d['p_value']:.3g} ({d['a_only']} A-only, {d['b_only']} B-only)"
            )
        else:
            evidence = f"95 % bootstrap [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        lines.append(
            f"| {d['a']} | {d['b']} | {d['benchmark']} | {d['metric']} | {d['n']} | "
            f"{_fmt(d['value_a'])} | {_fmt(d['value_b'])} | {d['difference']:+.3f} | {evidence} |"
        )
    return "\n".join(lines) + "\n"
