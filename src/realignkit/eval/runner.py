"""The evaluation pipeline behind ``realignkit eval``, ``judge`` and ``compare``.

:func:`evaluate` checks every input first (benchmarks, columns, judge endpoint), loads the
model once, generates every benchmark through the cache, frees the model when the judge
needs memory for its own, judges and scores, and writes the report after each benchmark.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from realignkit._version import __version__
from realignkit.data import read_rows, require_columns
from realignkit.errors import RealignError
from realignkit.eval import gsm8k, humaneval
from realignkit.eval.benchmarks import Benchmark, LoadOptions, load_benchmarks, split_specs
from realignkit.eval.cache import JsonlCache
from realignkit.eval.generate import (
    GenerationSettings,
    Generator,
    HFGenerator,
    generate_cached,
    load_generator,
    resolve_system_prompt,
)
from realignkit.eval.judges import (
    Judge,
    Verdict,
    judge_cached,
    make_judge,
    parse_refusal_label,
)
from realignkit.eval.keyword import COMPLIANCE, NON_ANSWER, REFUSAL
from realignkit.eval.report import (
    compare_markdown,
    load_summary,
    paired_differences,
    paired_markdown,
    plot_safety_utility,
    write_rows,
    write_summary,
)
from realignkit.eval.scoring import (
    NON_ANSWER_WARNING,
    accuracy_metrics,
    overall_scores,
    qa_correct,
    safety_metrics,
)
from realignkit.eval.stats import cohen_kappa, rate_with_interval

log = logging.getLogger(__name__)

PASS_AT = (1, 10, 100)


def benchmark_prompt(generator: Generator, bench: Benchmark, row: dict, system: str | None) -> str:
    """The text ``eval`` gives the model for one benchmark row (``realignkit plan`` measures
    the longest)."""
    if bench.kind == "humaneval":
        if generator.has_chat_template:
            return generator.format(humaneval.chat_prompt(row["prompt"]), system_prompt=system)
        return generator.format(row["prompt"], chat=False)
    return generator.format(row["prompt"], system_prompt=system)


def _base_row(bench: Benchmark, index: int, row: dict, response: str) -> dict[str, Any]:
    keep = ("category", "subcategory", "label", "type", "task_id", "reference")
    out: dict[str, Any] = {"benchmark": bench.name, "index": index, "prompt": row["prompt"]}
    out.update({k: row[k] for k in keep if k in row})
    out["response"] = response
    return out


def _score_safety(
    bench: Benchmark, responses: list[list[str]], judge: Judge, cache: JsonlCache
) -> tuple[list[dict], dict]:
    prompts = [r["prompt"] for r in bench.rows]
    answers = [samples[0] for samples in responses]
    verdicts = judge_cached(judge, prompts, answers, cache, desc=f"judge {bench.name}")
    rows = []
    for index, (row, answer, verdict) in enumerate(zip(bench.rows, answers, verdicts, strict=True)):
        out = _base_row(bench, index, row, answer)
        out.update(
            verdict=verdict.label,
            refused=verdict.refused,
            harmful=verdict.harmful,
            judge_note=verdict.note,
        )
        if verdict.score is not None:
            out["judge_score"] = verdict.score
        rows.append(out)
    return rows, safety_metrics(bench.kind, rows)


def _score_accuracy(bench: Benchmark, responses: list[list[str]]) -> tuple[list[dict], dict]:
    rows = []
    for index, (row, samples) in enumerate(zip(bench.rows, responses, strict=True)):
        out = _base_row(bench, index, row, samples[0])
        if bench.kind == "gsm8k":
            out["extracted"] = gsm8k.extract_answer(samples[0])
            out["correct"] = out["extracted"] is not None and out["extracted"] == row["reference"]
        else:
            out["correct"] = qa_correct(samples[0], row["reference"])
        rows.append(out)
    return rows, accuracy_metrics(bench.kind, rows)


def _score_humaneval(
    bench: Benchmark,
    responses: list[list[str]],
    *,
    chat: bool,
    timeout: float,
    allow_unsafe: bool = False,
) -> tuple[list[dict], dict]:
    programs, owners = [], []
    for index, (problem, samples) in enumerate(zip(bench.rows, responses, strict=True)):
        for sample_index, sample in enumerate(samples):
            programs.append(humaneval.build_program(problem, sample, chat=chat))
            owners.append((index, sample_index, sample))
    results = humaneval.run_many(programs, timeout=timeout, allow_unsafe=allow_unsafe)
    rows, passed_by_problem = [], [0] * len(bench.rows)
    for (index, sample_index, sample), result in zip(owners, results, strict=True):
        problem = bench.rows[index]
        rows.append(
            {
                "benchmark": bench.name,
                "index": index,
                "task_id": problem["task_id"],
                "sample": sample_index,
                "prompt": problem["prompt"],
                "response": sample,
                "status": result.status,
                "detail": result.detail,
                "passed": result.passed,
            }
        )
        passed_by_problem[index] += int(result.passed)
    n = len(responses[0]) if responses else 0
    metrics: dict[str, Any] = {"kind": "humaneval", "n": len(bench.rows), "samples": n}
    metrics["isolation"] = humaneval.isolation_level(allow_unsafe)  # what the scores ran under
    for k in PASS_AT:
        if k <= n:
            values = [humaneval.pass_at_k(n, c, k) for c in passed_by_problem]
            metrics[f"pass@{k}"] = sum(values) / len(values)
    if n == 1:  # one sample per problem: pass@1 is a binomial rate with a Wilson interval
        rate = rate_with_interval([c > 0 for c in passed_by_problem])
        metrics["rates"] = {"pass@1": rate.as_dict()}
    return rows, metrics


def run_lm_eval(
    generator: Generator,
    tasks: list[str],
    *,
    model_dir: str,
    adapter: str | None,
    batch_size: int,
    limit: int | None,
) -> dict[str, Any]:
    """lm-evaluation-harness tasks on the loaded HF model (vLLM: lm-eval's own vLLM model)."""
    try:
        import lm_eval
    except ImportError as err:
        raise RealignError(
            "--lm-eval-tasks needs lm-evaluation-harness: pip install 'lm_eval[hf]'"
        ) from err
    if isinstance(generator, HFGenerator):
        from lm_eval.models.huggingface import HFLM

        lm: Any = HFLM(
            pretrained=generator.model, tokenizer=generator.tokenizer, batch_size=batch_size
        )
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit)
    else:
        generator.close()
        args = {"pretrained": model_dir}
        if adapter:
            args.update(enable_lora=True, lora_local_path=adapter)
        results = lm_eval.simple_evaluate(model="vllm", model_args=args, tasks=tasks, limit=limit)
    return {
        task: {k: v for k, v in values.items() if isinstance(v, int | float)}
        for task, values in (results or {}).get("results", {}).items()
    }


def _check_lm_eval(tasks: list[str]) -> None:
    import importlib.util

    if tasks and importlib.util.find_spec("lm_eval") is None:
        raise RealignError("--lm-eval-tasks needs lm-evaluation-harness: pip install 'lm_eval[hf]'")


def summary_warnings(all_metrics: dict[str, dict[str, Any]]) -> list[str]:
    """One line per benchmark whose metrics carry a warning (too many non-answers)."""
    lines = []
    for name, metrics in all_metrics.items():
        if metrics.get("warning") == NON_ANSWER_WARNING:
            share = metrics["rates"]["non_answer"]
            lines.append(
                f"{name}: {NON_ANSWER_WARNING} (non-answers {100 * share['value']:.1f} % "
                f"of n={share['n']})"
            )
        elif metrics.get("warning"):
            lines.append(f"{name}: {metrics['warning']}")
    return lines


def evaluate(
    model: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    safety: str | list[str] | tuple[str, ...] = (),
    utility: str | list[str] | tuple[str, ...] = (),
    judge: str = "keyword",
    out_dir: str | os.PathLike[str],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
    backend: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 0.95,
    humaneval_timeout: float = 10.0,
    unsafe_code_execution: bool = False,
    lm_eval_tasks: str | list[str] | tuple[str, ...] = (),
    judge_model: str | None = None,
    name: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[str, Any] | None = None,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> dict[str, Any]:
    """Evaluate one model (or base + LoRA adapter) and write a report folder; return the summary.

    A model larger than one device: ``device_map``/``max_memory`` (HF backend, accelerate) or
    ``tensor_parallel_size``/``pipeline_parallel_size`` (vLLM backend).

    ``safety`` and ``utility`` are lists (or comma-separated strings) of benchmark specs (see
    :mod:`realignkit.eval.benchmarks`): built-in names such as ``catqa_english``, ``xstest``,
    ``gsm8k``, ``humaneval``, or ``harmful:PATH``, ``benign:PATH``, ``qa:PATH``. ``samples``
    applies to HumanEval only (pass@k needs ``temperature > 0``).

    The returned dict (also ``OUT/summary.json``) has:

    * ``metrics[SPEC]``: one dict per benchmark, keyed by the spec exactly as given, with
      ``kind``, ``n`` and

      - ``harmful`` (CatQA, HarmfulQA, DangerousQA, AdversarialQA, ``harmful:PATH``):
        ``harmfulness`` (share of all prompts answered with compliance, lowered further by a
        judge that rates harm), ``refusal_rate``, ``non_answer``,
        ``by_category`` / ``by_subcategory`` (``{name: {"n", "harmfulness", "ci95"}}``, CatQA);
      - ``benign`` (``benign:PATH``, ``xstest_safe``): ``over_refusal`` (share refused),
        ``non_answer``, ``by_category`` when the file has a ``category`` column;
      - ``xstest``: ``over_refusal`` (safe prompts), ``harmfulness`` and
        ``refusal_rate_unsafe`` (unsafe contrast prompts), ``non_answer`` (all prompts),
        ``n_safe``, ``n_unsafe``, ``by_category`` (refusal rate per XSTest type);
      - ``gsm8k``: ``accuracy``, ``no_answer``; ``qa`` (``qa:PATH``): ``accuracy``;
      - ``humaneval``: ``pass@1`` (and ``pass@10``, ``pass@100`` when ``samples`` allows),
        ``samples``, ``isolation`` (``"bubblewrap"``, or ``"none"`` when the OS sandbox was
        unavailable and ``unsafe_code_execution`` let the code run anyway).

      Every rate is also under ``rates[NAME]`` as ``{"value", "k", "n", "ci95"}`` (95 % Wilson
      interval); a benchmark with more than 20 % non-answers carries ``warning``.
      For example ``summary["metrics"]["harmful:data/heldout.jsonl"]["harmfulness"]``.
    * ``scores``: means over benchmarks of ``harmfulness``, ``over_refusal``, ``non_answer`` and
      ``utility`` (accuracy or pass@1), ``safety`` = 1 - harmfulness (None where nothing
      measured it), and ``ci95`` with their approximate 95 % intervals.
    * ``warnings``: one line per benchmark with too many non-answers ("this model does not
      answer: its safety figures say little").
    * ``lm_eval``: lm-evaluation-harness results per task when ``lm_eval_tasks`` is given.
    * ``model``, ``adapter``, ``name``, ``fingerprint``, ``judge``, ``backend``,
      ``system_prompt``, ``settings``, ``sources``, ``realignkit_version``.

    Rates are in [0, 1]. Generations and verdicts are cached in ``cache_dir`` (default
    ``OUT/cache``), so an interrupted or extended run regenerates nothing it already has.
    """
    safety_specs, utility_specs = split_specs(safety), split_specs(utility)
    tasks = split_specs(lm_eval_tasks)
    if not (safety_specs or utility_specs or tasks):
        raise RealignError(
            "nothing to evaluate: give safety or utility benchmarks (or lm-eval tasks)"
        )
    if samples > 1 and temperature <= 0:
        raise RealignError("--samples > 1 needs --temperature > 0 (greedy samples are identical)")
    options = LoadOptions(
        data_dir=data_dir,
        prompt_column=prompt_column,
        answer_column=answer_column,
        limit=limit,
        seed=seed,
    )
    benches = load_benchmarks(safety_specs, utility_specs, options)
    if any(b.kind == "humaneval" for b in benches):  # refuse before generating anything
        humaneval.isolation_level(unsafe_code_execution)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RealignError(f"report folder {str(out)!r} is a file")
    cache_root = Path(cache_dir) if cache_dir is not None else out / "cache"
    memo = cache_root / "fingerprints.json"
    judge_obj = make_judge(judge, judge_model=judge_model, device=device, memo_path=memo)
    if any(b.role == "safety" for b in benches):
        judge_obj.check()
    _check_lm_eval(tasks)
    if isinstance(dtype, str):
        from realignkit.modeling import parse_dtype

        dtype = parse_dtype(dtype)
    generations = JsonlCache(cache_root / "generations.jsonl")
    verdicts = JsonlCache(cache_root / "verdicts.jsonl")
    system = resolve_system_prompt(system_prompt)

    made = [p for p in (out, cache_root) if not p.exists()]  # to remove if loading fails
    try:
        generator = load_generator(
            model,
            adapter=adapter,
            backend=backend,
            dtype=dtype,
            device=device,
            seed=seed,
            trust_remote_code=trust_remote_code,
            memo_path=memo,
            device_map=device_map,
            max_memory=max_memory,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
        )
    except BaseException:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    model_name = Path(str(model)).name + (f"+{Path(str(adapter)).name}" if adapter else "")
    summary: dict[str, Any] = {
        "name": name or model_name,
        "model": str(model),
        "adapter": str(adapter) if adapter else None,
        "fingerprint": generator.fingerprint,
        "backend": generator.backend,
        "dtype": generator.dtype,
        "judge": judge,
        "system_prompt": system,
        "settings": {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p if temperature > 0 else None,
            "samples": samples,
            "seed": seed,
            "limit": limit,
            "chat_template": generator.has_chat_template,
        },
        "sources": {b.name: b.source for b in benches},
        "realignkit_version": __version__,
        "metrics": {},
        "scores": {},
        "warnings": [],
    }
    chat = generator.has_chat_template
    responses: dict[str, list[list[str]]] = {}
    try:
        # Benchmarks generated under the same settings share batches: several small prompt
        # files fill one batch of ``batch_size`` instead of one short batch each (fewer
        # decoding steps; 5-7 % less time for the demo's four test files on a CPU, where a
        # step's cost grows with its rows, more where decoding is memory-bound).
        groups: dict[GenerationSettings, list[Benchmark]] = {}
        for bench in benches:
            settings = GenerationSettings(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                num_samples=samples if bench.kind == "humaneval" else 1,
                seed=seed,
            )
            groups.setdefault(settings, []).append(bench)
        for settings, group in groups.items():
            texts = [
                [benchmark_prompt(generator, bench, row, system) for row in bench.rows]
                for bench in group
            ]
            pooled = generate_cached(
                generator,
                [text for bench_texts in texts for text in bench_texts],
                settings,
                generations,
                batch_size=batch_size,
                desc=group[0].name if len(group) == 1 else f"{len(group)} benchmarks",
            )
            for bench, bench_texts in zip(group, texts, strict=True):
                responses[bench.name], pooled = (
                    pooled[: len(bench_texts)],
                    pooled[len(bench_texts) :],
                )
        if tasks:
            summary["lm_eval"] = run_lm_eval(
                generator,
                tasks,
                model_dir=str(model),
                adapter=str(adapter) if adapter else None,
                batch_size=batch_size,
                limit=limit,
            )
    finally:
        generator.close()
        del generator

    try:
        for bench in benches:
            if bench.role == "safety":
                rows, metrics = _score_safety(bench, responses[bench.name], judge_obj, verdicts)
            elif bench.kind == "humaneval":
                rows, metrics = _score_humaneval(
                    bench,
                    responses[bench.name],
                    chat=chat,
                    timeout=humaneval_timeout,
                    allow_unsafe=unsafe_code_execution,
                )
            else:
                rows, metrics = _score_accuracy(bench, responses[bench.name])
            write_rows(out, bench.name, rows)
            summary["metrics"][bench.name] = metrics
            summary["scores"] = overall_scores(summary["metrics"])
            summary["warnings"] = summary_warnings(summary["metrics"])
            write_summary(out, summary)
        if not benches:
            write_summary(out, summary)
    finally:
        judge_obj.close()
    return summary


def _agreement(verdicts: list[Verdict], labels: list[bool]) -> dict[str, Any]:
    """Refusal (the positive class) against human labels; non-answers count as not refused."""
    pairs = list(zip((v.refused for v in verdicts), labels, strict=True))
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    fn = sum(g and not p for p, g in pairs)
    tn = len(pairs) - tp - fp - fn
    accuracy = rate_with_interval([p == g for p, g in pairs])
    return {
        "accuracy": accuracy.value,
        "ci95": list(accuracy.interval),
        "n": accuracy.n,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "kappa": cohen_kappa([p for p, _ in pairs], labels),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def judge_file(
    input_path: str | os.PathLike[str],
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    label_column: str | None = None,
    judge: str | list[str] | tuple[str, ...] = "keyword",
    out: str | os.PathLike[str] | None = None,
    judge_model: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge existing completions with one or more judges; compare them with each other and with
    human labels (refusal is the positive class).

    ``judge`` is one spec or several (a list, or comma-separated). Returns
    ``{"n", "judges": {SPEC: {...}}, "kappa": {"A vs B": κ}}`` where each judge's entry holds
    ``refusal_rate``, ``compliance_rate``, ``non_answer`` (each a ``{"value", "k", "n",
    "ci95"}`` rate), ``harmful_rate`` (judges that rate harm) and, with ``label_column``,
    ``agreement``: ``accuracy`` with its 95 % Wilson ``ci95``, ``precision``, ``recall``,
    Cohen's ``kappa`` with the labels and the confusion matrix ``tp`` / ``fp`` / ``fn`` / ``tn``
    (non-answers count as "not refused"). ``kappa`` between judges is over the three verdicts.
    For one judge its entry's keys are also at the top level. With ``out`` it writes every input
    row plus each judge's ``verdict`` (``verdict`` for one judge, ``verdict[SPEC]`` for several)
    as JSONL. ``limit`` judges a fixed-seed random subset of that many rows (in file order).
    """
    specs = list(dict.fromkeys(split_specs(judge)))
    if not specs:
        raise RealignError("no judge given")
    rows = read_rows(input_path)
    if limit is not None and limit < len(rows):
        import random

        rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]
    if not rows:
        raise RealignError(f"{input_path}: no rows to judge")
    columns = [prompt_column, response_column] + ([label_column] if label_column else [])
    require_columns(rows, columns, str(input_path))
    labels = None
    if label_column:
        labels = []
        for number, row in enumerate(rows, start=1):
            try:
                labels.append(parse_refusal_label(row[label_column]))
            except RealignError as err:
                raise RealignError(f"{input_path}: row {number}: {err}") from None
    judges = [make_judge(spec, judge_model=judge_model) for spec in specs]
    for judge_obj in judges:
        judge_obj.check()
    prompts = [str(r[prompt_column]) for r in rows]
    responses = [str(r[response_column] or "") for r in rows]
    by_judge: dict[str, list[Verdict]] = {}
    for spec, judge_obj in zip(specs, judges, strict=True):
        try:
            by_judge[spec] = judge_cached(judge_obj, prompts, responses, None, desc=spec)
        finally:
            judge_obj.close()
    result: dict[str, Any] = {"n": len(rows), "judges": {}, "kappa": {}}
    for spec, verdicts in by_judge.items():
        entry: dict[str, Any] = {
            name: rate_with_interval([v.label == label for v in verdicts]).as_dict()
            for name, label in (
                ("refusal_rate", REFUSAL),
                ("compliance_rate", COMPLIANCE),
                ("non_answer", NON_ANSWER),
            )
        }
        rated = [v.harmful for v in verdicts if v.harmful is not None]
        if rated:
            entry["harmful_rate"] = rate_with_interval(rated).as_dict()
        if labels is not None:
            entry["agreement"] = _agreement(verdicts, labels)
        result["judges"][spec] = entry
    for i, first in enumerate(specs):
        for second in specs[i + 1 :]:
            result["kappa"][f"{first} vs {second}"] = cohen_kappa(
                [v.label for v in by_judge[first]], [v.label for v in by_judge[second]]
            )
    if len(specs) == 1:
        result.update(result["judges"][specs[0]])
    if out is not None:
        import json

        from realignkit.checkpoint.output import write_text_atomic

        lines = []
        for index, row in enumerate(rows):
            record = dict(row)
            for spec, verdicts in by_judge.items():
                suffix = "" if len(specs) == 1 else f"[{spec}]"
                record[f"verdict{suffix}"] = verdicts[index].label
                record[f"refused{suffix}"] = verdicts[index].refused
                if verdicts[index].harmful is not None:
                    record[f"harmful{suffix}"] = verdicts[index].harmful
            lines.append(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        write_text_atomic(Path(out), "".join(lines))
        result["output"] = str(out)
    return result


def compare_reports(
    reports: list[str | os.PathLike[str]], *, plot: str | os.PathLike[str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """The markdown side-by-side table of report folders, and the scatter when ``plot`` is set.

    With two reports or more, the table is followed by the paired differences of every other
    report against the first over the prompts they share (:func:`paired_differences`): exact
    McNemar p-values for harmfulness and over-refusal, paired bootstrap intervals for utility.
    """
    if not reports:
        raise RealignError("compare needs at least one report folder")
    summaries = [load_summary(r) for r in reports]
    names = [s["name"] for s in summaries]
    for index, summary in enumerate(summaries):  # disambiguate equal names by folder
        if names.count(summary["name"]) > 1:
            summary["name"] = f"{summary['name']} ({Path(str(reports[index])).name})"
    table = compare_markdown(summaries)
    if len(reports) > 1:
        pairs = [
            paired_differences(reports[0], summaries[0], report, summary)
            for report, summary in zip(reports[1:], summaries[1:], strict=True)
        ]
        table += paired_markdown([p for group in pairs for p in group])
    if plot is not None:
        plot_safety_utility(summaries, plot)
    return table, summaries
