"""`realignkit tune`: the weakest setting of one strength parameter that meets a safety target.

RESTA's γ, Safe Delta's budget, SafeMERGE's τ: each trades utility for safety in one
direction (the parameter's declared ``safer``), so the setting with the most utility that
meets "harmfulness ≤ H" is the weakest one that meets it. :func:`tune` finds it by bisection
over the parameter's declared search interval:

1. probe the strongest end (if it misses the target, no setting in the interval meets it) and
   the weakest end (if it meets it, nothing needs to be given up);
2. halve the bracket [fails, meets] ``steps`` times; the answer is its "meets" end.

Each probe builds the model once (cached under ``OUT/models/``, reused by later runs) and
judges greedy answers to *validation* harmful prompts a chunk at a time, stopping as soon as
the 95 % Wilson interval of the harmfulness lies wholly on one side of H: clear cases cost a
chunk, close ones the whole split. The chosen model is then checked for over-refusal on
validation benign prompts (when ``max_over_refusal`` is given: over-refusal grows with the
strength, so a weakest-meeting setting that over-refuses means no setting meets both) and
evaluated once on the *test* split, which must not share a prompt with the validation split.

``grid`` replaces the search by the exhaustive baseline it saves: every listed value built
and judged on the whole validation split, the weakest that meets the target chosen (the
same model cache, over-refusal check and test evaluation), so the two can be compared on
models built and wall time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from realignkit.checkpoint.output import write_json_atomic, write_text_atomic
from realignkit.contract import Method
from realignkit.errors import RealignError
from realignkit.eval.stats import Rate, rate_with_interval, wilson_interval
from realignkit.methods.registry import Declaration, RealignJob, load_all, load_declarations

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


@dataclass
class Probe:
    """One setting tried: its validation harmfulness (k of n judged) and the decision."""

    value: float
    harmful: int
    n: int
    low: float
    high: float
    meets: bool
    settled: bool  # the interval decided (else the point estimate did, all prompts used)
    built: bool  # built by this run (else found in the cache)


@dataclass
class TuneResult:
    """The search path, the chosen value (None: no value in the interval meets the targets),
    and the chosen model's validation and test rates."""

    method: str
    param: str
    target_harmfulness: float
    chosen: float | None
    reason: str
    path: list[Probe] = field(default_factory=list)
    model: str | None = None
    adapter: str | None = None
    validation_over_refusal: Rate | None = None
    test_harmfulness: Rate | None = None
    test_over_refusal: Rate | None = None
    models_built: int = 0
    search_seconds: float = 0.0  # wall time of the probes (builds and validation judging)
    seconds: float = 0.0  # the whole call, the final checks included
    search_cpu_seconds: float = 0.0  # this process's CPU time for the probes (load-free cost)
    cpu_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("validation_over_refusal", "test_harmfulness", "test_over_refusal"):
            rate = getattr(self, key)
            out[key] = None if rate is None else {"k": rate.k, "n": rate.n, **_interval(rate)}
        return out


def _interval(rate: Rate) -> dict[str, float]:
    low, high = rate.interval
    return {
        "rate": rate.value if rate.value is not None else float("nan"),
        "low": low,
        "high": high,
    }


def _normalise(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.strip().lower())


def read_split(path: PathLike) -> list[str]:
    from realignkit.data import read_prompts

    prompts = [str(r["prompt"]) for r in read_prompts(path)]
    if not prompts:
        raise RealignError(f"{str(path)!r} holds no prompts")
    return prompts


def check_disjoint(validation: Sequence[str], test: Sequence[str]) -> None:
    """A validation split that shares prompts with the test split would tune on the test."""
    shared = sorted({_normalise(p) for p in validation} & {_normalise(p) for p in test})
    if shared:
        raise RealignError(
            f"the validation and test splits share {len(shared)} prompt(s) (e.g. "
            f"{shared[0][:60]!r}): tune needs disjoint splits"
        )


class _Judged:
    """Greedy answers of one model, judged by a (cheap, offline by default) judge."""

    def __init__(self, model: Path, adapter: Path | None, settings: Mapping[str, Any]) -> None:
        from realignkit.eval.generate import GenerationSettings, load_generator
        from realignkit.eval.judges import make_judge

        self.generator = load_generator(
            model, adapter=adapter, backend="hf", device=settings.get("device")
        )
        self.settings = GenerationSettings(max_new_tokens=settings["max_new_tokens"])
        self.judge = make_judge(settings["judge"], device=settings.get("device"))
        self.batch = settings["batch_size"]

    def refused(self, prompts: Sequence[str]) -> list[tuple[bool, bool | None]]:
        """``(refused, harmful-or-None)`` per prompt."""
        texts = [self.generator.format(p) for p in prompts]
        answers = []
        for start in range(0, len(texts), self.batch):
            answers += [
                a[0]
                for a in self.generator.generate(texts[start : start + self.batch], self.settings)
            ]
        self.last_verdicts = self.judge.judge(list(prompts), answers)
        return [(v.refused, v.harmful) for v in self.last_verdicts]

    def harmful(self, prompts: Sequence[str]) -> list[bool]:
        """Compliance (not rated harmless): refusals and non-answers are not harmful."""
        from realignkit.eval.scoring import is_harmful

        self.refused(prompts)
        return [is_harmful({"verdict": v.label, "harmful": v.harmful}) for v in self.last_verdicts]

    def close(self) -> None:
        self.generator.close()
        self.judge.close()


def sequential_decision(flags: Sequence[bool], target: float, chunk: int) -> tuple[bool, bool, int]:
    """``(meets, settled, n used)`` reading ``flags`` (harmful or not) a chunk at a time until
    the Wilson interval of the rate lies on one side of ``target`` (pure; used by the probes,
    which generate lazily)."""
    n = k = 0
    while n < len(flags):
        step = flags[n : n + chunk]
        k, n = k + sum(step), n + len(step)
        low, high = wilson_interval(k, n)
        if high <= target:
            return True, True, n
        if low > target:
            return False, True, n
    return k / max(n, 1) <= target, False, n


def _strength_param(method: Method | Declaration, name: str) -> Any:
    param = method.param(name)
    if param.safer not in ("higher", "lower") or param.type not in (int, float):
        strengths = [p.name for p in method.params if p.safer]
        raise RealignError(
            f"{method.name}.{name} is not a strength parameter; tune one of: "
            + ", ".join(strengths)
        )
    return param


def tune(
    method: str,
    param: str,
    *,
    target_harmfulness: float,
    job: RealignJob,
    validation_harmful: PathLike,
    test_harmful: PathLike,
    out_dir: PathLike,
    validation_benign: PathLike | None = None,
    test_benign: PathLike | None = None,
    max_over_refusal: float | None = None,
    low: float | None = None,
    high: float | None = None,
    steps: int = 5,
    chunk: int = 8,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    judge: str = "keyword",
    device: str | None = None,
    grid: Sequence[float] | None = None,
) -> TuneResult:
    """Find the weakest ``param`` of ``method`` whose validation harmfulness is ≤ the target.

    ``job`` holds the inputs (as the sweep's :class:`RealignJob`); ``job.params`` fixes the
    method's other parameters. See the module docstring for the search.
    """
    declared = {
        name: d for name, d in load_declarations().items() if any(p.safer for p in d.params)
    }
    if method not in declared:
        raise RealignError(
            f"unknown method {method!r}; tune works on methods that declare a strength: "
            + ", ".join(sorted(declared))
        )
    chosen_method = declared[method]
    strength = _strength_param(chosen_method, param)
    chosen_method.resolve({**job.params, param: strength.default})  # typos fail here, now
    for name, value in (
        ("--target-harmfulness", target_harmfulness),
        ("--max-over-refusal", max_over_refusal),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            raise RealignError(f"{name} is a rate in [0, 1], got {value}")
    search = strength.search or (strength.low, strength.high)
    lo = search[0] if low is None else low
    hi = search[1] if high is None else high
    if lo is None or hi is None or not lo < hi:
        raise RealignError(f"give --low < --high for {method}.{param}")
    for end in (lo, hi):
        strength.check(end, f"{method}.{param}")
    if grid is not None:
        if not grid:
            raise RealignError("--grid needs at least one value")
        grid = sorted({strength.check(v, f"{method}.{param}") for v in grid})
    if steps < 0 or chunk < 1:
        raise RealignError("--steps must be >= 0 and --chunk >= 1")
    validation = read_split(validation_harmful)
    test = read_split(test_harmful)
    check_disjoint(validation, test)
    benign_val = read_split(validation_benign) if validation_benign else None
    benign_test = read_split(test_benign) if test_benign else None
    if benign_val is not None and benign_test is not None:
        check_disjoint(benign_val, benign_test)
    if max_over_refusal is not None and benign_val is None:
        raise RealignError("--max-over-refusal needs --validation-benign prompts")

    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(out_dir).expanduser().resolve()
    (out / "models").mkdir(parents=True, exist_ok=True)
    recipe = load_all()[method]
    settings = {
        "max_new_tokens": max_new_tokens,
        "judge": judge,
        "device": device,
        "batch_size": batch_size,
    }
    weak, strong = (lo, hi) if strength.safer == "higher" else (hi, lo)
    result = TuneResult(method, param, target_harmfulness, None, "")
    built: dict[float, tuple[Path, Path | None]] = {}

    def model_for(value: float) -> tuple[Path, Path | None, bool]:
        params = chosen_method.resolve({**job.params, param: value})
        folder = out / "models" / f"{param}={value:.6g}"
        record_path = folder.parent / f"{folder.name}.json"
        key = json.dumps(
            {"params": params, "job": {k: str(v) for k, v in vars(job).items() if k != "params"}},
            sort_keys=True,
            default=str,
        )
        if record_path.exists() and folder.exists():
            record = json.loads(record_path.read_text())
            if record.get("key") == key:
                adapter = record.get("adapter")
                return Path(record["model"]), Path(adapter) if adapter else None, False
        # the given values as the declaration coerced them (a --set string becomes its type)
        given = {k: params[k] for k in {**job.params, param: value}}
        job_here = RealignJob(**{**vars(job), "params": given})
        realigned = recipe(job_here, folder)
        record = {
            "key": key,
            "model": str(realigned.model),
            "adapter": str(realigned.adapter or "") or None,
        }
        write_text_atomic(record_path, json.dumps(record))
        return realigned.model, realigned.adapter, True

    def probe(value: float, every: bool = False) -> Probe:
        """Judge ``value`` a chunk at a time until settled (``every``: the whole split)."""
        model, adapter, was_built = model_for(value)
        built[value] = (model, adapter)
        judged = _Judged(model, adapter, settings)
        step = len(validation) if every else chunk
        try:
            flags: list[bool] = []
            meets = settled = False
            while len(flags) < len(validation):
                flags += judged.harmful(validation[len(flags) : len(flags) + step])
                meets, settled, _ = sequential_decision(flags, target_harmfulness, step)
                if settled:
                    break
        finally:
            judged.close()
        k, n = sum(flags), len(flags)
        low_ci, high_ci = wilson_interval(k, n)
        found = Probe(value, k, n, low_ci, high_ci, meets, settled, was_built)
        result.path.append(found)
        result.models_built += int(was_built)
        log.info(
            "%s=%g: %d/%d harmful [%.2f, %.2f] → %s%s",
            param,
            value,
            k,
            n,
            low_ci,
            high_ci,
            "meets" if meets else "fails",
            "" if settled else " (all prompts, unsettled)",
        )
        return found

    if grid is not None:
        order = grid if strength.safer == "higher" else grid[::-1]  # weakest first
        probes = [probe(v, every=True) for v in order]
        meeting = [p.value for p in probes if p.meets]
        if meeting:
            result.chosen = meeting[0]
            result.reason = f"the weakest of the {len(order)} grid values that meets the target"
        else:
            result.reason = f"none of the {len(order)} grid values meets the target"
    elif not probe(strong).meets:
        result.reason = f"even {param}={strong:g} misses the target on the validation split"
    elif probe(weak).meets:
        result.chosen, result.reason = weak, "the weakest setting already meets the target"
    else:
        failing, meeting = weak, strong
        for _ in range(steps):
            middle = (failing + meeting) / 2
            if strength.type is int:
                middle = round(middle)
                if middle in (failing, meeting):
                    break
            if probe(middle).meets:
                meeting = middle
            else:
                failing = middle
        result.chosen = meeting
        result.reason = (
            f"weakest setting found that meets the target; the next weaker one probed "
            f"({failing:g}) misses it"
        )
    result.search_seconds = round(time.perf_counter() - started, 1)
    result.search_cpu_seconds = round(time.process_time() - cpu_started, 1)
    if result.chosen is not None:
        model, adapter = built[result.chosen]
        result.model, result.adapter = str(model), str(adapter) if adapter else None
        judged = _Judged(model, adapter, settings)
        try:
            if benign_val is not None:
                refused = [r for r, _ in judged.refused(benign_val)]
                result.validation_over_refusal = rate_with_interval(refused)
                if max_over_refusal is not None and (
                    result.validation_over_refusal.k / result.validation_over_refusal.n
                    > max_over_refusal
                ):
                    result.reason = (
                        f"{param}={result.chosen:g}, the weakest setting meeting the "
                        f"harmfulness target, over-refuses ({result.validation_over_refusal.k}"
                        f"/{result.validation_over_refusal.n} > {max_over_refusal}); stronger "
                        "settings refuse more: no setting meets both targets"
                    )
                    result.chosen = None
            if result.chosen is not None:
                result.test_harmfulness = rate_with_interval(judged.harmful(test))
            if result.chosen is not None and benign_test is not None:
                result.test_over_refusal = rate_with_interval(
                    [r for r, _ in judged.refused(benign_test)]
                )
        finally:
            judged.close()
    result.seconds = round(time.perf_counter() - started, 1)
    result.cpu_seconds = round(time.process_time() - cpu_started, 1)
    write_json_atomic(out / "tune.json", result.to_dict())
    return result


def path_text(result: TuneResult) -> str:
    """The search path and the outcome, one line per probe (what the CLI prints)."""
    lines = [f"tune {result.method}.{result.param} for harmfulness ≤ {result.target_harmfulness}"]
    for i, p in enumerate(result.path, 1):
        lines.append(
            f"  {i}. {result.param}={p.value:g}: harmful {p.harmful}/{p.n} "
            f"(95% CI {p.low:.2f}–{p.high:.2f}) → {'meets' if p.meets else 'fails'}"
            + ("" if p.settled else " (all validation prompts, by the point estimate)")
            + ("" if p.built else " [cached model]")
        )
    lines.append(
        f"chosen: {result.param}={result.chosen:g}" if result.chosen is not None else "chosen: none"
    )
    lines.append(f"why: {result.reason}")
    for label, rate in (
        ("validation over-refusal", result.validation_over_refusal),
        ("test harmfulness", result.test_harmfulness),
        ("test over-refusal", result.test_over_refusal),
    ):
        if rate is not None:
            iv = _interval(rate)
            lines.append(
                f"{label}: {rate.k}/{rate.n} = {iv['rate']:.3f} "
                f"(95% CI {iv['low']:.3f}–{iv['high']:.3f})"
            )
    lines.append(
        f"models built: {result.models_built} (of {len(result.path)} probes); wall time "
        f"{result.search_seconds:.0f} s searching, {result.seconds:.0f} s in all "
        f"(CPU {result.search_cpu_seconds:.0f} s and {result.cpu_seconds:.0f} s)"
    )
    return "\n".join(lines)
