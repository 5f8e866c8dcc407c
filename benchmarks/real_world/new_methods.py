"""Methods a finished real world did not run, measured beside the ones it did (read-only world).

    python benchmarks/real_world/new_methods.py --world /work/runs/d0 --out /work/runs/h18 all

A world built by `realignkit demo` (or benchmarks/real_world/run.py) before a method joined the
registry has no row for it. This script leaves the world untouched and writes under ``--out``:

    safety-ft   the safety fine-tune SafeMERGE merges from, built as the demo's stage builds it
                (the world's aligned model, its ``harmful_refusals.jsonl``, the demo preset's
                ``safety_finetune`` recipe)                                   → OUT/models/safety-ft
    sweep       per fine-tune: every recipe with a paper setting that the world's sweep config
                lacks, at that setting, on the world's models, evaluated under the world's own
                eval plan (same test prompts, judge, tokens, NLL solutions; only the generation
                cache moves to OUT)                                          → OUT/sweeps/ft-*/
    split       the validation and test prompt files `realignkit tune` reads: the world's
                validation split, and its English harmful test sets pooled   → OUT/data/
    tune-table  OUT/tune/*/tune.json (tune_and_new_methods.sh's searches and grids) as one table
                                                                       → OUT/tune.{md,json}
    table       one table: the aligned model, each fine-tune, the world's methods and the new
                ones, rates with n and 95 % Wilson intervals, Δ against the fine-tune (exact
                McNemar; paired bootstrap for the NLL)                → OUT/new_methods.{md,json}
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def safety_ft(world: Path, out: Path) -> Path:
    from realignkit.demo.real.pipeline import PRESETS
    from realignkit.train import finetune

    target = out / "models" / "safety-ft"
    if target.is_dir():
        return target
    settings = PRESETS[_json(world / "settings.json")["preset"]]()
    finetune(
        world / "models" / "aligned",
        world / "data" / "harmful_refusals.jsonl",
        target,
        settings.safety_finetune.config(settings.seed),
        method="safety-finetune",
    )
    return target


def new_methods(world_config: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The paper settings (and the demo's data extras) of the recipes the world did not run."""
    from realignkit.demo.real.pipeline import data_extras, paper_settings

    extras = data_extras()
    out = {}
    for name, paper in paper_settings().items():
        if name in world_config["methods"]:
            continue
        out[name] = {k: [v] for k, v in {**paper, **extras.get(name, {})}.items()}
    return out


def world_config(world: Path, kind: str) -> dict[str, Any]:
    """The world's sweep config of ``ft-kind``; before the world reached that sweep, the other
    fine-tune's with the fine-tuned model swapped (the rest of a config is the same)."""
    own = world / "sweeps" / f"ft-{kind}" / "config.json"
    if own.is_file():
        return _json(own)
    for other in ("full", "lora"):
        path = world / "sweeps" / f"ft-{other}" / "config.json"
        if other != kind and path.is_file():
            config = _json(path)
            config["models"].pop("finetuned", None)
            config["models"].pop("adapter", None)
            key = "adapter" if kind == "lora" else "finetuned"
            config["models"][key] = str(world / "models" / f"ft-{kind}")
            return config
    raise SystemExit(f"{world} has no sweep config yet (its sweep stage writes one)")


def sweep(world: Path, out: Path, kind: str, only: list[str] | None = None) -> Path:
    from realignkit.demo.real.measure import evaluate_model
    from realignkit.sweep import parse_config, run_sweep

    config = world_config(world, kind)
    methods = new_methods(config)
    if only:
        methods = {k: v for k, v in methods.items() if k in only}
    folder = out / "sweeps" / f"ft-{kind}"
    if (folder / "config.json").is_file():  # an earlier --only run's methods stay in the table
        methods = {**_json(folder / "config.json")["methods"], **methods}
    config["methods"] = methods
    config["models"]["safety_model"] = str(safety_ft(world, out))
    config["baselines"] = []  # the fine-tune's own report is the world's
    config["eval"]["generation_cache"] = str(out / "eval-cache")
    _write(folder / "config.json", json.dumps(config, indent=2) + "\n")
    run_sweep(parse_config(config), folder, evaluate_fn=evaluate_model)
    return folder


def split(world: Path, out: Path) -> None:
    from realignkit.demo.real.report import ENGLISH_HARMFUL

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in ENGLISH_HARMFUL:
        path = world / "data" / "test" / f"{name}.jsonl"
        if path.is_file():
            lines += [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    _write(data / "test_harmful_en.jsonl", "\n".join(lines) + "\n")


def _rows_of(folder: Path, kind: str, seed: int, skip_baseline: bool) -> list[dict[str, Any]]:
    from realignkit.demo.real.report import variant_row
    from realignkit.sweep import expand_variants, load_results, parse_config

    if not (folder / "config.json").is_file():
        return []
    results = load_results(folder / "results.jsonl")
    rows = []
    for variant in expand_variants(parse_config(_json(folder / "config.json"))):
        record = results.get(variant.id)
        if record is None or variant.id == "baseline-aligned":
            continue
        if variant.method == "baseline" and skip_baseline:
            continue
        rows.append(variant_row(variant, record, kind, seed))
    return rows


def table(world: Path, out: Path) -> Path:
    from realignkit.demo.real import report

    settings = _json(world / "settings.json")
    rows: list[dict[str, Any]] = []
    aligned = world / "reports" / "aligned"
    if (aligned / "summary.json").is_file():
        rows.append(
            {
                "model": "aligned",
                "finetune": "–",
                "seed": None,
                "method": "–",
                "setting": "",
                "paper": True,
                "report": str(aligned),
            }
        )
    for kind in settings["finetunes"]:
        rows += _rows_of(world / "sweeps" / f"ft-{kind}", kind, 0, skip_baseline=False)
        rows += _rows_of(out / "sweeps" / f"ft-{kind}", kind, 0, skip_baseline=True)
    for row in rows:
        row.update(
            report.measure_row(report.load_verdicts(Path(row["report"])), settings["test_sizes"])
        )
    run = SimpleNamespace(settings=SimpleNamespace(test_sizes=settings["test_sizes"]))
    report.compare_to_finetune(rows, run)
    text = [
        f"# New methods beside the world's ({world})",
        "",
        "Rates in %, 95 % Wilson intervals; Δ = method − its own fine-tune over the same prompts "
        "(exact McNemar p) or GSM8K solutions (paired bootstrap).",
        "",
        report.table(rows, settings["test_sizes"]),
        "",
        *[f"- {s}" for s in report.significance(rows)],
        "",
    ]
    md = out / "new_methods.md"
    _write(md, "\n".join(text))
    _write(out / "new_methods.json", json.dumps({"rows": rows}, indent=2, default=str) + "\n")
    return md


def _ci(rate: dict[str, Any] | None) -> str:
    if not rate:
        return "–"
    return (
        f"{rate['k']}/{rate['n']} = {100 * rate['rate']:.0f} % "
        f"[{100 * rate['low']:.0f}–{100 * rate['high']:.0f}]"
    )


def tune_table(out: Path) -> Path:
    """``OUT/tune/*/tune.json`` (searches and grids) as one markdown table."""
    lines = [
        "| run | target ≤ | chosen | probes (validation harmful k/n) | models built | search s "
        "(CPU s) | all s (CPU s) | validation over-refusal | test harmful | test over-refusal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    runs = {}
    for path in sorted((out / "tune").glob("*/tune.json")):
        r = _json(path)
        runs[path.parent.name] = r
        probes = ", ".join(
            f"{p['value']:g}: {p['harmful']}/{p['n']}{'' if p['settled'] else '*'}"
            f"{'✓' if p['meets'] else '✗'}"
            for p in r["path"]
        )
        chosen = "none" if r["chosen"] is None else f"{r['param']} = {r['chosen']:g}"
        lines.append(
            f"| {path.parent.name} | {r['target_harmfulness']:.3f} | {chosen} | {probes} | "
            f"{r['models_built']} | {r.get('search_seconds', 0):.0f} "
            f"({r.get('search_cpu_seconds', 0):.0f}) | {r.get('seconds', 0):.0f} "
            f"({r.get('cpu_seconds', 0):.0f}) | {_ci(r['validation_over_refusal'])} | "
            f"{_ci(r['test_harmfulness'])} | {_ci(r['test_over_refusal'])} |"
        )
    md = out / "tune.md"
    _write(
        md,
        "Probes in search order (grids: weakest first); ✓ meets the target, ✗ misses it; "
        "* decided by the point estimate on every validation prompt (the interval did not "
        "settle it).\n\n" + "\n".join(lines) + "\n",
    )
    _write(out / "tune.json", json.dumps(runs, indent=2, default=str) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    from realignkit.demo.real import set_threads
    from realignkit.errors import RealignError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "step", choices=("safety-ft", "sweep", "split", "table", "tune-table", "all")
    )
    parser.add_argument("--world", type=Path, required=True, help="a real world (read only)")
    parser.add_argument("--out", type=Path, required=True, help="where this script writes")
    parser.add_argument("--kinds", default="lora,full", help="fine-tunes to sweep, in order")
    parser.add_argument("--only", default="", help="comma-separated methods (default: all new)")
    parser.add_argument("--threads", default="1")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    set_threads(args.threads)
    world, out = args.world.resolve(), args.out.resolve()
    only = [m for m in args.only.split(",") if m]
    try:
        if args.step in ("safety-ft", "all"):
            safety_ft(world, out)
        if args.step in ("split", "all"):
            split(world, out)
        if args.step in ("sweep", "all"):
            for kind in [k for k in args.kinds.split(",") if k]:
                sweep(world, out, kind, only)
        if args.step in ("table", "all"):
            print(table(world, out).read_text())
        if args.step in ("tune-table", "all"):
            print(tune_table(out).read_text())
    except RealignError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
