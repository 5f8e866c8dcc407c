"""One safety–utility plot and one atomic file write, for every caller."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realignkit import plots
from realignkit.checkpoint.output import atomic_file, write_text_atomic
from realignkit.demo.pipeline import plot_results
from realignkit.eval.report import plot_safety_utility as plot_reports
from realignkit.sweep import plot_sweep

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch):
    """The axes of every figure a caller draws: (x label, y label, y limits, legend entries)."""
    seen: list[list[tuple]] = []
    save = plots.save_figure

    def record(fig, out_png):
        seen.append(
            [
                (
                    ax.get_xlabel(),
                    ax.get_ylabel(),
                    ax.get_ylim(),
                    [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
                )
                for ax in fig.axes
            ]
        )
        return save(fig, out_png)

    monkeypatch.setattr(plots, "save_figure", record)
    return seen


def test_compare_sweep_and_demo_share_one_axis_convention(drawn, tmp_path):
    summary = {
        "name": "m",
        "scores": {"utility": 0.6, "harmfulness": 0.2, "ci95": {"harmfulness": [0.1, 0.3]}},
    }
    plot_reports([summary], tmp_path / "compare.png")
    sweep_row = {
        "id": "resta-1",
        "method": "resta",
        "utility": 0.5,
        "harmfulness": 0.1,
        "pareto": True,
        "ci95": {},
    }
    plot_sweep([sweep_row], tmp_path / "sweep.png")
    demo_row = {"model": "finetuned-full", "finetune": "full", "task_accuracy": 0.9}
    plot_results([{**demo_row, "harmfulness": 0.4, "harmfulness_sd": 0.05}], tmp_path / "d.png")

    assert len(drawn) == 3
    for ((x_label, y_label, y_limits, _),) in drawn:
        assert y_label == plots.HARMFULNESS_LABEL  # down is safer, a share of prompts
        assert y_limits == plots.SHARE_LIMITS
        assert x_label.endswith("→")  # utility, right is better
    assert drawn[1][0][3] == ["Pareto front", "resta"]
    for name in ("compare.png", "sweep.png", "d.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.png", "d.png", "sweep.png"]


def test_panels_stand_side_by_side(drawn, tmp_path):
    point = plots.Point("ft", 1.2, 0.5, None, (0.4, 0.6))
    loss = plots.Panel([plots.Series([point])], x_label="NLL ← better", x_limits=None)
    share = plots.Panel([plots.Series([plots.Point("ft", 0.1, 0.5)], name="full")])
    plots.plot_safety_utility([loss, share], tmp_path / "two.png", title="two")
    assert [axes[:2] for axes in drawn[0]] == [
        ("NLL ← better", plots.HARMFULNESS_LABEL),
        (plots.UTILITY_LABEL, plots.HARMFULNESS_LABEL),
    ]


def test_an_atomic_write_leaves_the_old_file_when_it_fails(tmp_path):
    target = tmp_path / "sub" / "table.md"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.md"]  # no temporary left
    assert write_text_atomic(target, "new\n") == Path(target)
    assert target.read_text() == "new\n"


def test_the_real_worlds_report_draws_through_the_one_plot(drawn, tmp_path):
    """Harmfulness on y in both panels (against the NLL, a loss, and against over-refusal), one
    series per fine-tune; a row outside the papers' settings stays in the table only."""
    from realignkit.demo.real.report import plot

    def rate(value: float, n: int) -> dict:
        return {"value": value, "k": round(value * n), "n": n, "ci95": [value - 0.1, value + 0.1]}

    rows = [
        {"model": "aligned", "finetune": "–", "seed": None, "nll": 1.0},
        {"model": "ft-full", "finetune": "full", "seed": 0, "nll": 0.8},
        {"model": "ft-full + resta", "finetune": "full", "seed": 1, "nll": 0.9},
    ]
    for row, harm in zip(rows, (0.1, 0.5, 0.2), strict=True):
        row.update(harmfulness=rate(harm, 20), over_refusal=rate(0.2, 10), paper=True)
    rows.append({**rows[2], "model": "ft-lora + resta", "finetune": "lora", "paper": False})

    out = plot(rows, tmp_path / "real.png")
    ((nll, over),) = drawn
    assert nll[:3] == ("GSM8K reference-solution NLL (nats/token) ← better", *AXES)
    assert over[1:3] == AXES
    assert nll[3] == over[3] == ["references", "full fine-tune"]  # no LoRA row at its paper's
    assert out.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["real.png"]  # no temporary left behind


AXES = (plots.HARMFULNESS_LABEL, plots.SHARE_LIMITS)
WRITES = re.compile(
    r"os\.replace\(|\.write_text\(|\.write_bytes\(|open\([^)]*[\"']w|json\.dump\(|savefig\("
    r"|import matplotlib"
)


def test_demos_sweep_and_reports_write_only_through_the_one_helper():
    """Every file of the demos, the sweep and the evaluation report is written through
    checkpoint.output's atomic helpers and every figure through realignkit.plots (the sweep's
    results.jsonl is a journal, appended to line by line)."""
    package = Path(plots.__file__).parent
    files = [*sorted((package / "demo").rglob("*.py")), package / "sweep.py"]
    files.append(package / "eval" / "report.py")
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if WRITES.search(line)
    ]
    assert found == []
