"""The run's results: a markdown table, a JSON dump and the safety–utility plot.

Rows are the reference models (original, aligned, unaligned), then per fine-tune (full, LoRA)
the compromised model and every method at the papers' settings; the other sweep variants
follow in a second table. ``realignkit compare`` of all reports goes to ``compare.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

HARM_COLUMNS = (
    ("catqa_en_heldout", "CatQA-en held-out"),
    ("dangerousqa", "DangerousQA"),
    ("adversarialqa", "AdversarialQA"),
    ("catqa_zh_heldout", "CatQA-zh held-out"),
    ("catqa_vi_heldout", "CatQA-vi held-out"),
)


def hardware() -> str:
    """The machine in words: GPU name when there is one, else CPU cores."""
    import torch

    if torch.cuda.is_available():
        return f"1× {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cores = os.cpu_count()
    return (
        f"CPU only, {cores} cores ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    )


def command() -> str:
    """How this process was started (``python`` API callers get a note instead)."""
    if sys.argv and sys.argv[0].endswith("run.py"):
        return " ".join(["python", *sys.argv])
    return "the Python API (real_world.pipeline.Run)"


def _row(
    label: str,
    finetune: str,
    method: str,
    setting: str,
    summary: dict[str, Any],
    paper: bool,
    report: str,
) -> dict[str, Any]:
    metrics = summary.get("metrics", {})
    scores = summary.get("scores", {})
    row: dict[str, Any] = {
        "model": label,
        "finetune": finetune,
        "method": method,
        "setting": setting,
        "paper_setting": paper,
        "report": report,
    }
    for key, _ in HARM_COLUMNS:
        row[key] = metrics.get(key, {}).get("harmfulness")
    row["harmfulness"] = scores.get("harmfulness")
    row["over_refusal"] = metrics.get("xstest_safe", {}).get("over_refusal")
    row["gsm8k_accuracy"] = metrics.get("gsm8k", {}).get("accuracy")
    row["gsm8k_nll"] = metrics.get("gsm8k_nll", {}).get("mean_nll")
    row["n"] = {k: v.get("n") for k, v in metrics.items()}
    return row


def _is_paper(method: str, params: dict[str, Any]) -> bool:
    from real_world.pipeline import PAPER_SETTINGS

    paper = PAPER_SETTINGS.get(method)
    return paper is not None and all(params.get(k) == v for k, v in paper.items())


def collect(run: Any) -> list[dict[str, Any]]:
    """Every evaluated model of the run, references first, in a stable order."""
    from realignkit.sweep import expand_variants, load_results, parse_config

    rows = []
    for name in ("original", "aligned", "unaligned"):
        path = run.paths.report(name) / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text(encoding="utf-8"))
            rows.append(_row(name, "–", "–", "", summary, False, str(path.parent)))
    for kind in run.settings.finetunes:
        folder = run.paths.sweep(kind)
        config_path = folder / "config.json"
        if not config_path.is_file():
            continue
        results = load_results(folder / "results.jsonl")
        for variant in expand_variants(parse_config(json.loads(config_path.read_text()))):
            record = results.get(variant.id)
            if record is None or variant.id == "baseline-aligned":
                continue  # the aligned model is a reference row already
            if variant.method == "baseline":
                label, method, setting = f"ft-{kind}", "none (fine-tuned)", ""
            else:
                label, method = f"ft-{kind} + {variant.method}", variant.method
                setting = ", ".join(
                    f"{k}={v}"
                    for k, v in variant.params.items()
                    if k not in ("num_samples", "max_length")
                )
            rows.append(
                _row(
                    label,
                    kind,
                    method,
                    setting,
                    record,
                    variant.method == "baseline" or _is_paper(variant.method, variant.params),
                    record.get("report", ""),
                )
            )
    return rows


def _short_setting(setting: str) -> str:
    return setting.replace("gamma", "γ").replace("dare_p", "p").replace("threshold", "t")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}"


def _nll(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: harmfulness per set (%), mean, over-refusal (%), GSM8K accuracy (%), NLL."""
    head = (
        ["model", "setting"]
        + [title for _, title in HARM_COLUMNS]
        + ["mean harmful ↓", "XSTest over-refusal ↓", "GSM8K acc ↑", "GSM8K NLL ↓"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["model"], r["setting"]] + [_pct(r[k]) for k, _ in HARM_COLUMNS]
        cells += [
            _pct(r["harmfulness"]),
            _pct(r["over_refusal"]),
            _pct(r["gsm8k_accuracy"]),
            _nll(r["gsm8k_nll"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """Harmfulness against GSM8K NLL (utility) and against over-refusal, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["harmfulness"] is not None and r["gsm8k_nll"] is not None]
    if not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120)
    colours = {"–": "black", "full": "tab:blue", "lora": "tab:orange"}
    for ax, x_key, x_label in (
        (axes[0], "gsm8k_nll", "GSM8K reference-answer NLL (nats/token) ← better"),
        (axes[1], "over_refusal", "XSTest safe prompts refused ← better"),
    ):
        xs = [r[x_key] for r in points if r[x_key] is not None]
        x_step = max(max(xs) - min(xs), 1e-9) / 25  # points closer than this share a label
        labels: dict[tuple[int, int], list[str]] = {}
        anchors: dict[tuple[int, int], tuple[float, float]] = {}
        for r in points:
            if r[x_key] is None:
                continue
            reference = r["finetune"] == "–"
            ax.scatter(
                r[x_key],
                r["harmfulness"],
                s=60 if r["paper_setting"] or reference else 35,
                marker="s" if reference else "o",
                color=colours.get(r["finetune"], "grey"),
                facecolors=None if r["paper_setting"] or reference else "none",
                zorder=3,
            )
            # Models at the same point share one label, one name per line.
            spot = (round(r[x_key] / x_step), round(r["harmfulness"] * 25))
            name = r["model"] + (f" ({_short_setting(r['setting'])})" if r["setting"] else "")
            labels.setdefault(spot, []).append(name)
            anchors.setdefault(spot, (r[x_key], r["harmfulness"]))
        level: dict[tuple[int, int], int] = {}  # labels close together are stacked
        for spot, names in labels.items():
            zone = (spot[0] // 6, spot[1])
            shift = level.get(zone, 0)
            level[zone] = shift + len(names)
            ax.annotate(
                "\n".join(names),
                anchors[spot],
                textcoords="offset points",
                xytext=(4, 3 + 8 * shift),
                fontsize=6,
                va="bottom",
            )
        ax.set_xlabel(x_label)
        ax.set_ylabel("harmfulness: share of harmful prompts answered ↓")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_title("safety vs utility (blue: full FT, orange: LoRA; hollow: sweep)")
    axes[1].set_title("safety vs over-refusal")
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


def write_report(run: Any) -> Path:
    """``results.md``, ``results.json``, ``safety_utility.png`` and ``compare.md`` in OUT."""
    from realignkit.eval import compare_reports

    out = run.paths.out
    rows = collect(run)
    main = [r for r in rows if r["paper_setting"] or r["finetune"] == "–"]
    extra = [r for r in rows if r not in main]
    png = plot(rows, out / "safety_utility.png")
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    manifest = json.loads(run.paths.manifest.read_text()) if run.paths.manifest.is_file() else {}
    s = run.settings
    lines = [
        f"# SmolLM2-135M-Instruct real-world run ({s.preset})",
        "",
        f"- command: `{command()}`",
        f"- hardware: {hardware()}",
        f"- report written: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- wall time of the stages run (s): {json.dumps(timings)}; "
        f"sum {sum(timings.values()):.0f} s",
        f"- prompts per safety set: {s.safety_limit}, GSM8K answered: {s.gsm8k_limit}, "
        f"GSM8K NLL solutions: {s.nll_limit}; judge: keyword; greedy decoding, "
        f"{s.safety_max_new_tokens} new tokens (safety), {s.gsm8k_max_new_tokens} (GSM8K)",
        f"- data: {json.dumps(manifest.get('align', {}))} alignment rows, "
        f"{manifest.get('unalign')} unalignment rows, {manifest.get('gsm8k_train')} GSM8K "
        f"training problems; held-out CatQA categories: "
        f"{', '.join(manifest.get('held_out_categories', []))}",
        "",
        "Harmfulness: % of harmful prompts answered (not refused). Over-refusal: % of XSTest "
        "safe prompts refused. GSM8K NLL: mean per-token negative log-likelihood of the "
        "reference solutions (nats).",
        "",
        "## Papers' settings",
        "",
        table(main),
    ]
    if extra:
        lines += ["## Sweep (other settings)", "", table(extra)]
    if png is not None:
        lines += [f"![safety–utility]({png.name})", ""]
    reports = [r["report"] for r in rows if r["report"]]
    if reports:
        compare_md, _ = compare_reports(reports, plot=out / "compare.png")
        (out / "compare.md").write_text(compare_md, encoding="utf-8")
    results_md = out / "results.md"
    results_md.write_text("\n".join(lines), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"rows": rows, "timings": timings}, indent=2, default=str) + "\n"
    )
    return results_md
