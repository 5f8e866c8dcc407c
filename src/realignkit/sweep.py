"""Sweep: build every setting of every re-alignment method, evaluate each, draw the Pareto front.

Users choose a method and its strength by what each costs in utility for what it buys in
safety. A sweep config names the models, the methods with their grids and the evaluation::

    models:
      aligned: runs/aligned          # θ_A, the safety-aligned chat model
      pretrained: runs/pretrained    # W_P (Safe LoRA)
      unaligned: runs/unaligned      # or unaligned_adapter, or safety_vector: an existing one
      finetuned: runs/finetuned      # or adapter: a LoRA adapter on `aligned`
    data:
      harmful: data/harmful.jsonl    # IRR's Fisher data
      calibration: data/task.jsonl   # IRR's recalibration data
    methods:
      resta: {gamma: [0.25, 0.5, 1.0]}
      resta+dare: {gamma: 0.5, dare_p: [0.1, 0.3]}
      irr: {rho: [0.3, 0.5, 1.0]}
      safelora: {threshold: [0.3, 0.5]}
    baselines: [finetuned, aligned]  # reference points (default: both)
    keep_models: true                # false: delete each variant's weights once evaluated
    workdir: runs/shared-work        # optional: share the Fisher scores etc. across sweeps
    eval:                            # keyword arguments of realignkit.eval.evaluate
      safety: [catqa_english]
      utility: [gsm8k]
      limit: 100
    seed: 0

Method names are registry recipes; a list value is a grid axis, a scalar a fixed setting, and
the variants are the product of the axes. Everything lands in the output folder:

    work/              shared artefacts: the safety vector, IRR's Fisher scores (job.workdir;
                       ``workdir:`` puts them elsewhere, so the sweeps of several fine-tunes
                       of one aligned model compute them once, and keeps the unedited
                       aligned model's Hessians there too: 0.4 GB for a 135M model, ~20 GB
                       for a 7B one)
    variants/ID/       each re-aligned model or adapter, with ID.json saying how it was built
    reports/ID/        each evaluation report;  cache/  generations and verdicts, shared
    results.jsonl      one line per evaluated variant, keyed by ID and a hash of its inputs
    sweep.md, sweep.json, sweep.png    the table and the harmfulness–utility plot

A rerun builds and evaluates only the variants whose (ID, inputs hash) is not in
``results.jsonl`` yet, and reuses built models whose build record matches. With
``keep_models: false`` a variant's weights are deleted as soon as its result is recorded (its
build record and report stay), so a sweep of N full models needs the disk of one.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from realignkit.checkpoint.output import write_json_atomic, write_text_atomic
from realignkit.errors import RealignError
from realignkit.methods.registry import Realigned, RealignJob, load_all

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
EvaluateFn = Callable[..., dict[str, Any]]

TOP_KEYS = ("models", "data", "methods", "baselines", "eval", "seed", "keep_models", "workdir")
MODEL_KEYS = (
    "aligned",
    "pretrained",
    "unaligned",
    "unaligned_adapter",
    "safety_vector",
    "finetuned",
    "adapter",
    "safety_model",
)
DATA_KEYS = ("harmful", "calibration")
BASELINES = ("finetuned", "aligned")
EVAL_SET_BY_SWEEP = ("model", "adapter", "out_dir", "name", "cache_dir")
# What hand-written recipes need beyond the aligned and fine-tuned models (checked up
# front); declared methods say it themselves (contract.py).
NEEDS: dict[str, tuple[str, ...]] = {}
# A declared input → the sweep config keys that provide it (any one of them).
INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "finetuned": ("finetuned", "adapter"),
    "base": ("aligned",),  # every fine-tune of a sweep starts from the aligned model
    "safety_vector": ("unaligned", "unaligned_adapter", "safety_vector"),
    "aligned": ("aligned",),
    "pretrained": ("pretrained",),
    "safety_finetune": ("safety_model",),
    "safety_data": ("harmful",),
    "fisher": ("harmful",),  # the registry computes the Fisher scores from the harmful data
    "calibration": ("calibration",),
}


@dataclass
class SweepConfig:
    """A checked sweep config: absolute paths, method grids, evaluation keyword arguments."""

    models: dict[str, Path]
    methods: list[tuple[str, dict[str, list[Any]]]]
    eval: dict[str, Any]
    baselines: list[str]
    seed: int = 0
    keep_models: bool = True  # False: a variant's weights go once its result is recorded
    # inputs that depend on the aligned model and the data only (None: OUT/work)
    workdir: Path | None = None


@dataclass
class Variant:
    """One point of the sweep: a baseline or a method with one setting of its grid."""

    id: str
    method: str  # a recipe name, or "baseline"
    params: dict[str, Any]
    build_key: str = ""  # hash of what decides the built model
    key: str = ""  # hash of what decides its result: the build and the evaluation settings


@dataclass
class SweepResult:
    """What a sweep produced; ``built`` and ``evaluated`` count the work done by this run."""

    out_dir: Path
    rows: list[dict[str, Any]]
    table_md: Path
    table_json: Path
    plot: Path | None
    built: int = 0
    evaluated: int = 0
    ids: list[str] = field(default_factory=list)


# --- the Pareto front (pure) -------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Which ``(harmfulness, utility)`` points no other point beats.

    A point is dominated when another is at most as harmful and at least as useful, and
    strictly better in one of the two. Points missing a value are never on the front; equal
    points are both on it.
    """
    valid = [
        h is not None and u is not None and not (math.isnan(h) or math.isnan(u)) for h, u in points
    ]
    front = []
    for i, (h_i, u_i) in enumerate(points):
        if not valid[i]:
            front.append(False)
            continue
        dominated = any(
            valid[j] and h_j <= h_i and u_j >= u_i and (h_j < h_i or u_j > u_i)
            for j, (h_j, u_j) in enumerate(points)
        )
        front.append(not dominated)
    return front


# --- config --------------------------------------------------------------------------------------


def load_config(path: PathLike) -> dict[str, Any]:
    """Read a sweep YAML file (or JSON, which is YAML too) into a dict."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RealignError(f"sweep config {str(path)!r}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise RealignError(f"sweep config {str(path)!r}: not valid YAML{line}") from err
    if not isinstance(config, dict):
        raise RealignError(f"sweep config {str(path)!r}: expected a mapping at the top level")
    return config


def _path(value: Any, key: str, base_dir: Path | None) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise RealignError(f"sweep config: {key} must be a path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path.resolve() if path.exists() else path


def _resolve_spec(spec: str, base_dir: Path | None) -> str:
    """A benchmark spec whose file path is made relative to the config file's folder."""
    if base_dir is None:
        return spec
    kind, sep, source = spec.partition(":")
    if sep and kind in ("harmful", "benign", "xstest", "qa", "gsm8k", "humaneval"):
        if source.startswith("hf:") or Path(source).is_absolute():
            return spec
        return f"{kind}:{base_dir / source}"
    if not sep and (base_dir / spec).is_file():
        return str(base_dir / spec)
    return spec


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _parse_methods(raw: Any) -> list[tuple[str, dict[str, list[Any]]]]:
    """``{name: {param: value | [values]}}`` or ``[{method: name, param: ...}, ...]``."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        items = [(name, grid) for name, grid in raw.items()]
    elif isinstance(raw, list):
        items = []
        for entry in raw:
            if not isinstance(entry, dict) or "method" not in entry:
                raise RealignError(
                    f"sweep config: each methods entry needs 'method', got {entry!r}"
                )
            items.append((entry["method"], {k: v for k, v in entry.items() if k != "method"}))
    else:
        raise RealignError("sweep config: methods must be a mapping or a list")
    methods = []
    for name, grid in items:
        if grid is None:
            grid = {}
        if not isinstance(grid, dict):
            raise RealignError(f"sweep config: settings of method {name!r} must be a mapping")
        axes = {}
        for param, value in grid.items():
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if not values:
                raise RealignError(f"sweep config: {name}.{param} is an empty list")
            axes[str(param)] = values
        methods.append((str(name), axes))
    return methods


def parse_config(config: Mapping[str, Any], base_dir: PathLike | None = None) -> SweepConfig:
    """Check a sweep config and make its paths absolute (relative ones from ``base_dir``)."""
    base = Path(base_dir).resolve() if base_dir is not None else None
    unknown = sorted(set(config) - set(TOP_KEYS))
    if unknown:
        raise RealignError(f"sweep config: unknown key {unknown[0]!r}; use {', '.join(TOP_KEYS)}")
    models: dict[str, Path] = {}
    for section, keys in (("models", MODEL_KEYS), ("data", DATA_KEYS)):
        raw = config.get(section) or {}
        if not isinstance(raw, dict):
            raise RealignError(f"sweep config: {section} must be a mapping")
        allowed = MODEL_KEYS + DATA_KEYS
        for key, value in raw.items():
            if key not in allowed:
                raise RealignError(
                    f"sweep config: unknown {section} entry {key!r}; use {', '.join(keys)}"
                )
            if value is not None:
                models[key] = _path(value, f"{section}.{key}", base)
    if "aligned" not in models:
        raise RealignError("sweep config: models.aligned (the safety-aligned model) is required")
    if ("finetuned" in models) == ("adapter" in models):
        raise RealignError("sweep config: give exactly one of models.finetuned and models.adapter")
    sources = [k for k in ("unaligned", "unaligned_adapter", "safety_vector") if k in models]
    if len(sources) > 1:
        raise RealignError(
            f"sweep config: give one of models.{sources[0]} and models.{sources[1]}, not both"
        )
    for key, path in models.items():
        if not path.exists():
            raise RealignError(f"sweep config: {key} {str(path)!r} does not exist")

    methods = _parse_methods(config.get("methods"))
    baselines = [str(b) for b in _as_list(config.get("baselines", list(BASELINES)) or [])]
    for name in baselines:
        if name not in BASELINES:
            raise RealignError(
                f"sweep config: unknown baseline {name!r}; use {', '.join(BASELINES)}"
            )
    if not methods and not baselines:
        raise RealignError("sweep config: nothing to sweep (no methods and no baselines)")

    settings = dict(config.get("eval") or {})
    for key in EVAL_SET_BY_SWEEP:
        if key in settings:
            raise RealignError(f"sweep config: eval.{key} is set by the sweep for each variant")
    for role in ("safety", "utility"):
        specs = [str(s) for s in _as_list(settings.get(role) or [])]
        if not specs:
            raise RealignError(
                f"sweep config: eval.{role} must name at least one benchmark "
                "(the plot needs harmfulness and utility)"
            )
        settings[role] = [_resolve_spec(s, base) for s in specs]
    if settings.get("data_dir") is not None:
        settings["data_dir"] = str(_path(settings["data_dir"], "eval.data_dir", base))
    seed = config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RealignError(f"sweep config: seed must be an integer, got {seed!r}")
    keep_models = config.get("keep_models", True)
    if not isinstance(keep_models, bool):
        raise RealignError(f"sweep config: keep_models must be true or false, got {keep_models!r}")
    workdir = config.get("workdir")
    if workdir is not None:
        workdir = _path(workdir, "workdir", base)
    return SweepConfig(models, methods, settings, baselines, seed, keep_models, workdir)


# --- variants ------------------------------------------------------------------------------------


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def variant_id(method: str, params: Mapping[str, Any]) -> str:
    """A readable, folder-safe name: ``resta-gamma=0.5``, ``irr-rho=0.3``, ``safelora``."""
    parts = [method] + [f"{k}={_value_text(params[k])}" for k in sorted(params)]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))


def expand_variants(cfg: SweepConfig) -> list[Variant]:
    """Baselines first, then each method's grid in config order (the product of its axes)."""
    variants = [Variant(f"baseline-{name}", "baseline", {"model": name}) for name in cfg.baselines]
    for method, axes in cfg.methods:
        names = list(axes)
        for values in itertools.product(*(axes[n] for n in names)):
            params = dict(zip(names, values, strict=True))
            variants.append(Variant(variant_id(method, params), method, params))
    seen: set[str] = set()
    for variant in variants:
        if variant.id in seen:
            raise RealignError(f"sweep config: variant {variant.id!r} appears twice")
        seen.add(variant.id)
        variant.build_key = _hash(
            {
                "method": variant.method,
                "params": variant.params,
                "models": {k: str(v) for k, v in sorted(cfg.models.items())},
                "seed": cfg.seed,
            }
        )
        variant.key = _hash({"build": variant.build_key, "eval": cfg.eval})
    return variants


def _hash(blob: Mapping[str, Any]) -> str:
    """A short hash of a JSON-able description (what decides a build or a result)."""
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def method_needs(
    method: str, axes: Mapping[str, list[Any]] | None = None, unknown: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The inputs a method needs in any setting of its grid (declared, else NEEDS, else
    ``unknown``)."""
    from realignkit.methods.registry import METHODS

    declared = METHODS.get(method)
    if declared is None:
        return NEEDS.get(method, unknown)
    axes = axes or {}
    names = list(axes)
    needs: set[str] = set()
    for values in itertools.product(*(axes[n] for n in names)) if names else [()]:
        setting = {**declared.sweep_defaults, **dict(zip(names, values, strict=True))}
        needs |= declared.inputs_needed(declared.resolve(setting))
    return tuple(sorted(needs - {"finetuned"}))


def check_grid(method: str, axes: Mapping[str, list[Any]]) -> None:
    """Every axis is a declared, sweepable parameter and every value is in its range (a
    hand-written recipe's :class:`~realignkit.methods.registry.Declaration` included)."""
    from realignkit.methods.registry import DECLARED

    declared = DECLARED.get(method)
    if declared is None:
        return
    for param, values in axes.items():
        for value in values:
            declared.resolve({param: value}, where="sweep config: ", sweep=True)


def check_methods(cfg: SweepConfig, recipes: Mapping[str, Any]) -> None:
    """Every method is a registered recipe, its grid fits its declared parameters and it has
    the inputs it needs, before any work."""
    for method, axes in cfg.methods:
        if method not in recipes:
            raise RealignError(
                f"sweep config: unknown method {method!r}; available: {', '.join(sorted(recipes))}"
            )
        check_grid(method, axes)
        for need in method_needs(method, axes):
            if need == "safety_vector":
                if not any(
                    k in cfg.models for k in ("unaligned", "unaligned_adapter", "safety_vector")
                ):
                    raise RealignError(
                        f"sweep config: method {method!r} needs the safety vector: give "
                        "models.unaligned, models.unaligned_adapter or models.safety_vector"
                    )
            else:
                keys = INPUT_KEYS.get(need, (need,))
                if not any(k in cfg.models for k in keys):
                    where = " or ".join(
                        f"{'data' if k in DATA_KEYS else 'models'}.{k}" for k in keys
                    )
                    raise RealignError(f"sweep config: method {method!r} needs {where}")


# --- running -------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each variant id in ``results.jsonl`` (a torn last line is skipped)."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "id" in record:
            records[record["id"]] = record
    return records


def _append_result(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _safety_vector(cfg: SweepConfig, work: Path, needed: bool) -> Path | None:
    """The given safety vector, or one computed once into ``work/`` (reused by later runs)."""
    if "safety_vector" in cfg.models:
        return cfg.models["safety_vector"]
    if not needed or not any(k in cfg.models for k in ("unaligned", "unaligned_adapter")):
        return None
    from realignkit.checkpoint.fingerprint import source_fingerprint
    from realignkit.methods.safety_vector import compute_safety_vector

    # paths and contents: a shared workdir outlives a model retrained at the same path
    roles = ["aligned"] + [k for k in ("unaligned", "unaligned_adapter") if k in cfg.models]
    stamp = {role: [str(cfg.models[role]), source_fingerprint(cfg.models[role])] for role in roles}
    path = work / "safety-vector"
    record = work / "safety-vector.json"
    if path.is_dir() and _read_json(record) == stamp:
        return path
    log.info("computing the safety vector once for every variant")
    compute_safety_vector(
        cfg.models["aligned"],
        path,
        unaligned=cfg.models.get("unaligned"),
        unaligned_adapter=cfg.models.get("unaligned_adapter"),
        overwrite=True,
    )
    write_json_atomic(record, stamp)
    return path


def _baseline(cfg: SweepConfig, which: str) -> Realigned:
    if which == "aligned":
        return Realigned(model=cfg.models["aligned"])
    if "adapter" in cfg.models:
        return Realigned(model=cfg.models["aligned"], adapter=cfg.models["adapter"])
    return Realigned(model=cfg.models["finetuned"])


def _build(
    variant: Variant,
    cfg: SweepConfig,
    out_dir: Path,
    safety_vector: Path | None,
    recipes: Mapping[str, Any],
) -> tuple[Realigned, bool]:
    """The variant's model (and adapter), built now or found from an earlier run."""
    if variant.method == "baseline":
        return _baseline(cfg, variant.params["model"]), False
    folder = out_dir / "variants" / variant.id
    record_path = out_dir / "variants" / f"{variant.id}.json"
    record = _read_json(record_path)
    if record and record.get("key") == variant.build_key and folder.exists():
        adapter = record.get("adapter")
        return Realigned(
            model=Path(record["model"]),
            adapter=Path(adapter) if adapter else None,
            info=record.get("info", {}),
        ), False
    m = cfg.models
    job = RealignJob(
        aligned=m["aligned"],
        safety_vector=safety_vector or out_dir / "work" / "no-safety-vector",
        finetuned=m.get("finetuned"),
        adapter=m.get("adapter"),
        pretrained=m.get("pretrained"),
        unaligned=m.get("unaligned"),
        harmful=m.get("harmful"),
        calibration=m.get("calibration"),
        safety_model=m.get("safety_model"),
        workdir=cfg.workdir or out_dir / "work",
        share_hessians=cfg.workdir is not None,  # a shared workdir: worth the disk
        seed=cfg.seed,
        params=dict(variant.params),
        overwrite=True,
    )
    log.info("building %s", variant.id)
    realigned = recipes[variant.method](job, folder)
    built = {
        "id": variant.id,
        "key": variant.build_key,
        "method": variant.method,
        "params": variant.params,
        "model": str(realigned.model),
        "adapter": str(realigned.adapter) if realigned.adapter else None,
        "info": realigned.info,
    }
    write_json_atomic(record_path, built)
    return realigned, True


def _check_eval_settings(evaluate_fn: EvaluateFn, settings: Mapping[str, Any]) -> None:
    params = inspect.signature(evaluate_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in settings:
        if key not in params:
            known = ", ".join(k for k in params if k not in EVAL_SET_BY_SWEEP)
            raise RealignError(f"sweep config: unknown eval setting {key!r}; known: {known}")


def run_sweep(
    config: Mapping[str, Any] | SweepConfig,
    out_dir: PathLike,
    *,
    base_dir: PathLike | None = None,
    evaluate_fn: EvaluateFn | None = None,
) -> SweepResult:
    """Build and evaluate every variant of ``config`` missing from ``out_dir``; write the table
    and the plot. ``evaluate_fn`` defaults to :func:`realignkit.eval.evaluate` and is called as
    ``evaluate_fn(model, adapter=..., out_dir=..., name=..., cache_dir=..., **config["eval"])``;
    it returns a summary with ``scores`` (``harmfulness``, ``utility``, ...) and ``metrics``.
    """
    cfg = config if isinstance(config, SweepConfig) else parse_config(config, base_dir)
    if evaluate_fn is None:
        from realignkit.eval import evaluate as evaluate_fn
    _check_eval_settings(evaluate_fn, cfg.eval)
    recipes = load_all()
    check_methods(cfg, recipes)
    variants = expand_variants(cfg)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise RealignError(f"sweep output {str(out)!r} is a file")
    for sub in ("work", "variants", "reports", "cache"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    results = load_results(results_path)
    todo = [v for v in variants if results.get(v.id, {}).get("key") != v.key]
    axes_of = dict(cfg.methods)
    needs_vector = any(
        "safety_vector" in method_needs(v.method, axes_of.get(v.method), ("safety_vector",))
        for v in todo
        if v.method != "baseline"
    )
    work = cfg.workdir or out / "work"
    work.mkdir(parents=True, exist_ok=True)
    safety_vector = _safety_vector(cfg, work, needs_vector) if todo else None
    built = evaluated = 0
    for variant in tqdm(todo, desc="sweep", unit="variant", disable=not todo):
        realigned, was_built = _build(variant, cfg, out, safety_vector, recipes)
        built += int(was_built)
        log.info("evaluating %s", variant.id)
        summary = evaluate_fn(
            str(realigned.model),
            adapter=str(realigned.adapter) if realigned.adapter else None,
            out_dir=str(out / "reports" / variant.id),
            name=variant.id,
            cache_dir=str(out / "cache"),
            **cfg.eval,
        )
        evaluated += 1
        record = {
            "id": variant.id,
            "key": variant.key,
            "method": variant.method,
            "params": variant.params,
            "model": str(realigned.model),
            "adapter": str(realigned.adapter) if realigned.adapter else None,
            "info": realigned.info,
            "scores": summary.get("scores", {}),
            "metrics": summary.get("metrics", {}),
            "report": str(out / "reports" / variant.id),
        }
        _append_result(results_path, record)
        results[variant.id] = record
        if not cfg.keep_models and variant.method != "baseline":
            # only after the result is on disk: an interrupted run rebuilds nothing it recorded
            shutil.rmtree(out / "variants" / variant.id, ignore_errors=True)
    rows = sweep_rows([results[v.id] for v in variants])
    table_md, table_json, plot = write_outputs(rows, out)
    return SweepResult(
        out, rows, table_md, table_json, plot, built, evaluated, [v.id for v in variants]
    )


# --- table and plot ------------------------------------------------------------------------------


def sweep_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: its setting, headline scores and whether it is on the front."""
    rows = []
    for record in records:
        scores = record.get("scores") or {}
        rows.append(
            {
                "id": record["id"],
                "method": record["method"],
                "params": record["params"],
                "harmfulness": scores.get("harmfulness"),
                "over_refusal": scores.get("over_refusal"),
                "utility": scores.get("utility"),
                "safety": scores.get("safety"),
                "non_answer": scores.get("non_answer"),
                "ci95": scores.get("ci95", {}),
                "report": record.get("report"),
                "metrics": record.get("metrics", {}),
            }
        )
    front = pareto_front([(r["harmfulness"], r["utility"]) for r in rows])
    for row, on_front in zip(rows, front, strict=True):
        row["pareto"] = on_front
    return rows


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
    """The sweep table: one line per variant; ★ marks the Pareto front."""
    lines = [
        "# Sweep: harmfulness against utility",
        "",
        "Lower harmfulness and higher utility are better; ★ marks the Pareto front (no other "
        "variant is both less harmful and more useful).",
        "",
        "| variant | method | setting | harmfulness ↓ | over-refusal ↓ | non-answer | utility ↑ "
        "| front |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        setting = ", ".join(f"{k}={_value_text(v)}" for k, v in r["params"].items()) or "defaults"
        lines.append(
            f"| {r['id']} | {r['method']} | {setting} | {_fmt(r['harmfulness'])} | "
            f"{_fmt(r['over_refusal'])} | {_fmt(r.get('non_answer'))} | {_fmt(r['utility'])} | "
            f"{'★' if r['pareto'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """Harmfulness (y) against utility (x) with 95 % intervals, one series per method and the
    Pareto front joined by a line; None: nothing to plot."""
    from realignkit.plots import Panel, Point, Series, plot_safety_utility

    def point(r: dict[str, Any]) -> Point:
        intervals = r.get("ci95") or {}
        ci = (intervals.get("utility"), intervals.get("harmfulness"))
        return Point(r["id"], r["utility"], r["harmfulness"], *ci)

    points = [r for r in rows if r["harmfulness"] is not None and r["utility"] is not None]
    if not points:
        log.warning("no variant has both harmfulness and utility: no plot")
        return None
    methods = sorted({r["method"] for r in points})
    series = [
        Series(
            [point(r) for r in points if r["method"] == method],
            name=method,
            marker="s" if method == "baseline" else "o",
            color=f"C{i % 10}",
        )
        for i, method in enumerate(methods)
    ]
    front = [point(r) for r in points if r["pareto"]]
    panel = Panel(series, front=front)
    return plot_safety_utility(
        panel, out_png, title="Safety re-alignment sweep", panel_size=(7.0, 5.0)
    )


def write_outputs(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path, Path | None]:
    """``sweep.md``, ``sweep.json`` and ``sweep.png`` in ``out`` (each replaced atomically)."""
    table_md, table_json = out / "sweep.md", out / "sweep.json"
    write_text_atomic(table_md, sweep_markdown(rows))
    write_json_atomic(table_json, {"variants": rows})
    return table_md, table_json, plot_sweep(rows, out / "sweep.png")
