"""IRR's mask selection, fixed against adaptive, measured on a real-model world.

    python benchmarks/irr_modes.py --world runs/real-world --out runs/irr-modes
    python benchmarks/irr_modes.py --world W --out O --rhos 0.5 --finetunes full --limit 20

For every fine-tune (full and LoRA) and ρ (0.3, 0.5, 1 by default) it builds IRR with
``--mask-selection fixed`` (realignkit's default: the mask chosen once, on the original delta)
and ``adaptive`` (each 128-column block's mask chosen inside the sweep on the updated delta, as
the official code does); everything else is the same. Each model is evaluated, and the table
gives per variant harmfulness and over-refusal (pooled over the safety sets, Wilson 95 %
intervals, n), GSM8K accuracy (Wilson) and the GSM8K reference-solution NLL when the world's
evaluation provides it, then adaptive − fixed per (fine-tune, ρ): paired differences over the
same prompts (exact McNemar p) and, for the NLL, a paired bootstrap interval.

World layout (the real-model world of ``realignkit.demo.real``; every path can be given
instead): ``W/models/{aligned,safety-vector,ft-full,ft-lora}``, ``W/data/harmful_refusals.jsonl``
(Fisher data), ``W/data/gsm8k_train.jsonl`` (calibration), ``W/data/test/*.jsonl`` (safety sets;
``xstest_safe`` is the over-refusal set). When ``W/sweeps/ft-full/config.json`` exists, its
evaluation plan and IRR settings (samples, length) are used, and the world's own evaluation
(``realignkit.demo.real.measure.evaluate_model``, with the NLL) when that module is installed;
otherwise ``realignkit.eval.evaluate`` on the safety sets (and ``--gsm8k-limit`` GSM8K problems).

Outputs in ``--out``: ``models/`` (each variant), ``reports/`` (each evaluation), ``fisher/``
(when computed here), ``irr_modes.json`` and ``irr_modes.md``. A rerun skips built models and
finished reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("irr_modes")
MODES = ("fixed", "adaptive")


# --- inputs -------------------------------------------------------------------------------------


def world_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Every input path, from ``--world`` unless given on its own; missing ones are None."""
    world = Path(args.world) if args.world else None

    def pick(given: str | None, *relative: str) -> Path | None:
        if given:
            return Path(given)
        if world is None:
            return None
        path = world.joinpath(*relative)
        return path if path.exists() else None

    inputs = {
        "aligned": pick(args.aligned, "models", "aligned"),
        "safety_vector": pick(args.safety_vector, "models", "safety-vector"),
        "full": pick(args.ft_full, "models", "ft-full"),
        "lora": pick(args.ft_lora, "models", "ft-lora"),
        "harmful": pick(args.harmful, "data", "harmful_refusals.jsonl"),
        "calibration": pick(args.calibration, "data", "gsm8k_train.jsonl"),
        "fisher": Path(args.fisher) if args.fisher else None,
        "config": None,
        "world": world,
    }
    config = pick(None, "sweeps", "ft-full", "config.json")
    if config is not None:
        inputs["config"] = json.loads(config.read_text())
    if args.safety:
        inputs["safety"] = list(args.safety)
    elif inputs["config"] is not None:
        inputs["safety"] = list(inputs["config"]["eval"]["safety"])
    elif world is not None and (world / "data" / "test").is_dir():
        inputs["safety"] = [
            f"{'benign' if p.stem.startswith('xstest') else 'harmful'}:{p}"
            for p in sorted((world / "data" / "test").glob("*.jsonl"))
        ]
    else:
        inputs["safety"] = []
    for key in ("aligned", "safety_vector", "calibration"):
        if inputs[key] is None:
            raise SystemExit(f"error: no {key.replace('_', ' ')}: give --world or --{key}")
    if inputs["fisher"] is None and inputs["harmful"] is None:
        raise SystemExit("error: give --fisher (a folder) or --harmful (data to compute it on)")
    if not inputs["safety"]:
        raise SystemExit("error: no safety sets to evaluate on: give --safety SPEC")
    return inputs


def irr_params(inputs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Calibration samples and length: the world's IRR settings unless given."""
    world = {}
    if inputs["config"] is not None:
        world = {k: v[0] for k, v in inputs["config"]["methods"].get("irr", {}).items()}
    return {
        "num_samples": args.num_samples or int(world.get("num_samples", 128)),
        "max_length": args.max_length or int(world.get("max_length", 512)),
        "block_size": args.block_size,
    }


def fisher_folder(inputs: dict[str, Any], params: dict[str, Any], out: Path, seed: int) -> Path:
    """The Fisher scores: given, or computed once on the harmful data (per-sample, the
    registry recipe's default) with the same sample count and length as the calibration."""
    from realignkit.calib.fisher import compute_fisher
    from realignkit.data import read_rows

    if inputs["fisher"] is not None:
        return inputs["fisher"]
    # The world's own sweeps computed them already (the recipe's cache, same samples).
    world = inputs.get("world")
    if world is not None:
        name = f"fisher-per-sample-{seed}-{params['num_samples']}"
        for found in sorted(Path(world).glob(f"sweeps/*/work/{name}/fisher.json")):
            return found.parent
    folder = out / "fisher"
    if not (folder / "fisher.json").exists():
        compute_fisher(
            inputs["aligned"],
            inputs["harmful"],
            folder,
            mode="per-sample",
            generate="response" not in read_rows(inputs["harmful"])[0],
            num_samples=params["num_samples"],
            max_length=params["max_length"],
            seed=seed,
            progress=False,
            overwrite=True,
        )
    return folder


# --- building and evaluating --------------------------------------------------------------------


def build_variant(
    inputs: dict[str, Any], kind: str, mode: str, rho: float, fisher: Path, out: Path, params
) -> tuple[Path, dict[str, Any]]:
    """IRR of one fine-tune at one ρ and mask selection; reused when already built."""
    from realignkit.calib.fisher import FisherScores
    from realignkit.checkpoint import FinetunedWeights
    from realignkit.methods.irr import IRRSettings, irr
    from realignkit.methods.safety_vector import SafetyVector

    folder = out / "models" / f"{kind}-{mode}-rho{rho:g}"
    meta = folder / "irr.json"
    if not meta.exists():
        settings = IRRSettings(rho=rho, mask_selection=mode, seed=0, **params)
        if kind == "lora":
            weights = FinetunedWeights(base=inputs["aligned"], adapter=inputs["lora"])
        else:
            weights = FinetunedWeights(inputs["full"], base=inputs["aligned"])
        start = time.perf_counter()
        with weights, SafetyVector(inputs["safety_vector"]) as sv, FisherScores(fisher) as fs:
            irr(
                weights,
                sv,
                folder,
                fisher=fs,
                calibration=inputs["calibration"],
                settings=settings,
                overwrite=True,
                progress=False,
            )
        log.info("built %s in %.0f s", folder.name, time.perf_counter() - start)
    layers = json.loads(meta.read_text())["layers"]
    return folder, {
        "removed": sum(s["removed"] for s in layers),
        "candidates": sum(s["candidates"] for s in layers),
        "entries": sum(s["entries"] for s in layers),
    }


def make_evaluator(inputs: dict[str, Any], args: argparse.Namespace, out: Path):
    """``evaluate(model, adapter, report_dir, name) -> summary``: the world's evaluation when
    available (same plan as the world's own results, with the NLL), else realignkit's."""
    plan = dict(inputs["config"]["eval"]) if inputs["config"] is not None else None
    if args.eval_plan:  # evaluate_model's keyword arguments, e.g. a world's EvalPlan as JSON
        plan = json.loads(Path(args.eval_plan).read_text())
    cache = str(out / "eval-cache")  # our own: the world's run may be writing its cache now
    try:
        from realignkit.demo.real.measure import evaluate_model
    except ImportError:
        evaluate_model = None
    if plan is not None and evaluate_model is not None and not args.plain_eval:
        plan.update(safety=inputs["safety"], generation_cache=cache)
        if args.limit is not None:
            log.warning("--limit is ignored with the world's evaluation plan")

        def world_eval(model, adapter, report, name):
            return evaluate_model(model, adapter=adapter, out_dir=report, name=name, **plan)

        return world_eval, "realignkit.demo.real.measure.evaluate_model (the world's plan)"

    from realignkit.eval import evaluate

    if plan is not None:  # the world's answer lengths and batch size
        args.max_new_tokens = plan.get("safety_max_new_tokens", args.max_new_tokens)
        args.gsm8k_max_new_tokens = plan.get("gsm8k_max_new_tokens", args.gsm8k_max_new_tokens)

    def plain_eval(model, adapter, report, name):
        summary_path = Path(report) / "summary.json"
        if summary_path.exists():
            return json.loads(summary_path.read_text())
        summary = evaluate(
            model,
            adapter=adapter,
            safety=inputs["safety"],
            out_dir=Path(report) / "safety",
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            cache_dir=cache,
            name=name,
            data_dir=args.data_dir,
        )
        if args.gsm8k_limit:
            summary_u = evaluate(
                model,
                adapter=adapter,
                utility=["gsm8k"],
                out_dir=Path(report) / "utility",
                max_new_tokens=args.gsm8k_max_new_tokens,
                limit=args.gsm8k_limit,
                cache_dir=cache,
                name=name,
                data_dir=args.data_dir,
            )
            summary["metrics"].update(summary_u["metrics"])
        Path(report).mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        return summary

    how = (
        f"realignkit.eval.evaluate, keyword judge, {args.max_new_tokens} new tokens, "
        f"{args.limit or 'all'} prompts per safety set, {args.gsm8k_limit} GSM8K problems"
    )
    return plain_eval, how


# --- the comparison -----------------------------------------------------------------------------


def outcome_flags(report: Path) -> dict[str, dict[tuple[str, int], bool]]:
    """Per-item outcomes from a report's row files: ``harmful`` (harmful prompts answered),
    ``over_refusal`` (benign prompts refused), ``correct`` (GSM8K); keyed by (set, index)."""
    from realignkit.eval.scoring import is_harmful

    flags: dict[str, dict[tuple[str, int], bool]] = {
        "harmful": {},
        "over_refusal": {},
        "correct": {},
    }
    for path in sorted(Path(report).rglob("rows/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            key = (str(row["benchmark"]), int(row["index"]))
            if "correct" in row:
                flags["correct"][key] = bool(row["correct"])
            elif str(row["benchmark"]).startswith(("benign:", "xstest_safe")):
                flags["over_refusal"][key] = bool(row["refused"])
            elif "refused" in row:  # the judge's harm verdict, else "not refused"
                flags["harmful"][key] = is_harmful(row)
    return flags


def per_problem_nll(summary: dict[str, Any]) -> list[float] | None:
    nll = summary.get("metrics", {}).get("gsm8k_nll") or {}
    return nll.get("per_problem")


def describe(report: Path, summary: dict[str, Any]) -> dict[str, Any]:
    from realignkit.eval.stats import rate_with_interval

    flags = outcome_flags(report)
    row: dict[str, Any] = {}
    for metric, values in flags.items():
        if values:
            row[metric] = rate_with_interval([values[k] for k in sorted(values)]).as_dict()
    nll = per_problem_nll(summary)
    if nll:
        row["gsm8k_nll"] = {"mean": sum(nll) / len(nll), "n": len(nll)}
    return row


def compare(fixed: Path, adaptive: Path, sums: tuple[dict, dict]) -> dict[str, Any]:
    """Adaptive − fixed on the same items: rates (exact McNemar) and NLL (paired bootstrap)."""
    from realignkit.eval.stats import paired_bootstrap_interval, paired_rate_difference

    a, b = outcome_flags(fixed), outcome_flags(adaptive)
    result: dict[str, Any] = {}
    for metric in a:
        keys = sorted(set(a[metric]) & set(b[metric]))
        if not keys:
            continue
        diff = paired_rate_difference([a[metric][k] for k in keys], [b[metric][k] for k in keys])
        result[metric] = {
            "difference": diff.difference,
            "n": diff.n,
            "fixed_only": diff.a_only,
            "adaptive_only": diff.b_only,
            "mcnemar_p": diff.p_value,
        }
    nll_a, nll_b = per_problem_nll(sums[0]), per_problem_nll(sums[1])
    if nll_a and nll_b and len(nll_a) == len(nll_b):
        mean, low, high = paired_bootstrap_interval(nll_a, nll_b)
        result["gsm8k_nll"] = {"difference": mean, "ci95": [low, high], "n": len(nll_a)}
    return result


def pct(rate: dict[str, Any] | None) -> str:
    if not rate:
        return "–"
    low, high = rate["ci95"]
    return f"{100 * rate['value']:.1f} [{100 * low:.0f}, {100 * high:.0f}] (n={rate['n']})"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# IRR mask selection: fixed (realignkit default) vs adaptive (official code)",
        "",
        f"Evaluation: {results['evaluation']}. Rates in % with Wilson 95 % intervals.",
        "",
        "| fine-tune | ρ | mask selection | removed | harmfulness ↓ | over-refusal ↓ "
        "| GSM8K acc ↑ | GSM8K NLL ↓ |",
        "| --- | ---: | --- | ---: | --- | --- | --- | --- |",
    ]
    for v in results["variants"]:
        nll = v["metrics"].get("gsm8k_nll")
        lines.append(
            f"| {v['finetune']} | {v.get('rho', '–')} | {v['mode']} | {v.get('removed', '–')} "
            f"| {pct(v['metrics'].get('harmful'))} | {pct(v['metrics'].get('over_refusal'))} "
            f"| {pct(v['metrics'].get('correct'))} | "
            + (f"{nll['mean']:.4f} (n={nll['n']})" if nll else "–")
            + " |"
        )
    lines += [
        "",
        "Adaptive − fixed, paired over the same prompts (points; exact McNemar p; NLL: paired "
        "bootstrap 95 % interval):",
        "",
        "| fine-tune | ρ | harmfulness | over-refusal | GSM8K acc | GSM8K NLL |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]

    def cell(c: dict[str, Any] | None) -> str:
        if not c:
            return "–"
        return (
            f"{100 * c['difference']:+.1f} ({c['fixed_only']}↔{c['adaptive_only']}, "
            f"p={c['mcnemar_p']:.2g}, n={c['n']})"
        )

    for c in results["comparisons"]:
        nll = c.get("gsm8k_nll")
        nll_text = (
            f"{nll['difference']:+.4f} [{nll['ci95'][0]:+.4f}, {nll['ci95'][1]:+.4f}]"
            if nll
            else "–"
        )
        lines.append(
            f"| {c['finetune']} | {c['rho']} | {cell(c.get('harmful'))} | "
            f"{cell(c.get('over_refusal'))} | {cell(c.get('correct'))} | {nll_text} |"
        )
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", help="a real-model world folder (see the module doc)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--aligned")
    parser.add_argument("--safety-vector")
    parser.add_argument("--ft-full", help="the full fine-tune (a model folder)")
    parser.add_argument("--ft-lora", help="the LoRA fine-tune (an adapter on --aligned)")
    parser.add_argument("--fisher", help="Fisher scores folder (else computed on --harmful)")
    parser.add_argument("--harmful", help="harmful prompts with refusals, for the Fisher scores")
    parser.add_argument("--calibration", help="recalibration data (the fine-tuning task)")
    parser.add_argument("--safety", action="append", help="safety set spec (repeatable)")
    parser.add_argument("--rhos", default="0.3,0.5,1")
    parser.add_argument("--finetunes", default="full,lora")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--num-samples", type=int, default=None, help="IRR calibration samples")
    parser.add_argument("--max-length", type=int, default=None, help="IRR calibration length")
    parser.add_argument("--block-size", type=int, default=128, help="IRR block (columns)")
    parser.add_argument("--limit", type=int, default=None, help="prompts per safety set")
    parser.add_argument("--gsm8k-limit", type=int, default=0, help="GSM8K problems (plain eval)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gsm8k-max-new-tokens", type=int, default=160)
    parser.add_argument("--data-dir", default=None, help="shared data folder (built-in sets)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the fine-tunes")
    parser.add_argument(
        "--eval-plan", help="JSON of evaluate_model's keyword arguments (else the world's)"
    )
    parser.add_argument(
        "--plain-eval",
        action="store_true",
        help="realignkit.eval.evaluate with --limit even when the world's evaluation exists "
        "(a time-boxed run; no NLL)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    inputs = world_inputs(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = irr_params(inputs, args)
    rhos = [float(r) for r in args.rhos.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    kinds = [k for k in args.finetunes.split(",") if k and inputs.get(k) is not None]
    if not kinds:
        raise SystemExit("error: no fine-tune found: give --ft-full and/or --ft-lora")
    fisher = fisher_folder(inputs, params, out, seed=0)
    evaluate, how = make_evaluator(inputs, args, out)
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "evaluation": how,
        "irr": {**params, "fisher": str(fisher)},
        "inputs": {k: str(v) for k, v in inputs.items() if k != "config"},
        "variants": [],
        "comparisons": [],
        "seconds": {},
    }

    def finish(variant: dict[str, Any], model: Path, adapter: Path | None, name: str) -> None:
        report = out / "reports" / name
        start = time.perf_counter()
        summary = evaluate(model, adapter, report, name)
        results["seconds"][f"eval {name}"] = round(time.perf_counter() - start, 1)
        variant["report"] = str(report)
        variant["metrics"] = describe(report, summary)
        variant["_summary"] = summary
        results["variants"].append(variant)

    for kind in kinds:
        if not args.no_baselines:
            if kind == "lora":
                finish(
                    {"finetune": kind, "mode": "none"}, inputs["aligned"], inputs["lora"], "ft-lora"
                )
            else:
                finish({"finetune": kind, "mode": "none"}, inputs["full"], None, "ft-full")
        for rho in rhos:
            built = {}
            for mode in modes:
                start = time.perf_counter()
                folder, counts = build_variant(inputs, kind, mode, rho, fisher, out, params)
                results["seconds"][f"build {folder.name}"] = round(time.perf_counter() - start, 1)
                variant = {"finetune": kind, "rho": rho, "mode": mode, **counts}
                finish(variant, folder, None, folder.name)
                built[mode] = variant
            if "fixed" in built and "adaptive" in built:
                pair = (built["fixed"], built["adaptive"])
                comparison = compare(
                    Path(pair[0]["report"]),
                    Path(pair[1]["report"]),
                    (pair[0]["_summary"], pair[1]["_summary"]),
                )
                results["comparisons"].append({"finetune": kind, "rho": rho, **comparison})
            # Written after every ρ, so a time-boxed run leaves what it measured.
            write_results(out, results)
    write_results(out, results)
    print(markdown(results))
    return 0


def write_results(out: Path, results: dict[str, Any]) -> None:
    clean = dict(results)
    clean["variants"] = [
        {k: v for k, v in x.items() if k != "_summary"} for x in results["variants"]
    ]
    (out / "irr_modes.json").write_text(json.dumps(clean, indent=2, default=str))
    (out / "irr_modes.md").write_text(markdown(clean))


if __name__ == "__main__":
    raise SystemExit(main())
