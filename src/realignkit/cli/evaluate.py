"""`realignkit eval`, `judge` and `compare`: parse options, call :mod:`realignkit.eval`, print."""

from __future__ import annotations

from pathlib import Path

import typer

from realignkit.cli.app import app
from realignkit.cli.options import DeviceMapOption, MaxMemory
from realignkit.errors import RealignError


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@app.command("eval")
def eval_command(
    model: str | None = typer.Option(None, "--model", "-m", help="Model folder or hub id."),
    base: str | None = typer.Option(None, "--base", help="Base model, with --adapter."),
    adapter: str | None = typer.Option(None, "--adapter", help="PEFT LoRA adapter on the model."),
    safety: list[str] = typer.Option(
        [],
        "--safety",
        help="Safety benchmarks, comma-separated: catqa_english, catqa_chinese, "
        "catqa_vietnamese, harmfulqa, dangerousqa, adversarialqa, xstest, xstest_safe, "
        "xstest_unsafe, harmful:PATH, benign:PATH, or a file / hf:ORG/NAME (harmful).",
    ),
    utility: list[str] = typer.Option(
        [], "--utility", help="Utility benchmarks, comma-separated: gsm8k, humaneval, qa:PATH."
    ),
    judge: str = typer.Option(
        "keyword",
        "--judge",
        help="keyword, refusal-lm:PATH, llamaguard:PATH, classifier:PATH or openai:URL.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (created or extended)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Tokens per answer."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts per generation batch."),
    limit: int | None = typer.Option(
        None, "--limit", help="Fixed-seed random subset per benchmark."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of subsets and sampling."),
    system_prompt: str | None = typer.Option(
        None, "--system-prompt", help="System prompt text, or 'llama2' for Llama-2's default."
    ),
    backend: str = typer.Option("auto", "--backend", help="hf, vllm, or auto (vLLM on GPU)."),
    lm_eval_tasks: str | None = typer.Option(
        None, "--lm-eval-tasks", help="lm-evaluation-harness tasks, comma-separated."
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Folder with the built-in data sets (default: "
        "$REALIGNKIT_DATA_DIR, ./data, ../shared/data).",
    ),
    prompt_column: str = typer.Option("prompt", "--prompt-column", help="Prompt column of files."),
    answer_column: str = typer.Option("answer", "--answer-column", help="Answer column of qa:."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Default: OUT/cache."),
    dtype: str | None = typer.Option(None, "--dtype", help="bf16, fp16, fp32 (default: auto)."),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu... (default: auto)."),
    device_map: DeviceMapOption = None,
    max_memory: MaxMemory = None,
    tensor_parallel_size: int = typer.Option(
        1, "--tensor-parallel-size", help="vLLM: GPUs per tensor-parallel group."
    ),
    pipeline_parallel_size: int = typer.Option(
        1, "--pipeline-parallel-size", help="vLLM: pipeline stages (GPUs or nodes)."
    ),
    samples: int = typer.Option(1, "--samples", help="HumanEval samples per problem (pass@k)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling when temperature > 0."),
    judge_model: str | None = typer.Option(
        None, "--judge-model", help="Model name at an openai: judge endpoint."
    ),
    humaneval_timeout: float = typer.Option(10.0, "--humaneval-timeout", help="Seconds/program."),
    unsafe_code_execution: bool = typer.Option(
        False,
        "--unsafe-code-execution",
        help="Run HumanEval's model-written code without the OS sandbox where it is unavailable.",
    ),
    name: str | None = typer.Option(None, "--name", help="Model name in reports and plots."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Generate answers to safety and utility benchmarks, judge and score them, write a report."""
    from realignkit.eval import evaluate
    from realignkit.eval.report import SUMMARY_MD

    if model and base:
        raise RealignError("give either --model or --base (with --adapter), not both")
    target = model or base
    if target is None:
        raise RealignError("no model: give --model M, or --base B --adapter L")
    if base and not adapter:
        raise RealignError("--base needs --adapter (or use --model)")
    summary = evaluate(
        target,
        adapter=adapter,
        safety=safety,
        utility=utility,
        judge=judge,
        out_dir=out,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        system_prompt=system_prompt,
        backend=backend,
        data_dir=data_dir,
        prompt_column=prompt_column,
        answer_column=answer_column,
        cache_dir=cache_dir,
        dtype=dtype,
        device=device,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        humaneval_timeout=humaneval_timeout,
        unsafe_code_execution=unsafe_code_execution,
        lm_eval_tasks=lm_eval_tasks or (),
        judge_model=judge_model,
        name=name,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
        max_memory=max_memory,
        tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size,
    )
    from realignkit.eval.stats import Rate

    for bench, metrics in summary["metrics"].items():
        rates = metrics.get("rates", {})
        parts = [f"n {metrics['n']}"]
        for key, value in metrics.items():
            if key in rates:
                parts.append(f"{key} {Rate(rates[key]['k'], rates[key]['n'])}")
            elif key not in ("kind", "n", "warning") and not isinstance(value, dict):
                parts.append(f"{key} {_fmt(value)}")
        typer.echo(f"{bench}: " + ", ".join(parts))
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}")
    for task, values in summary.get("lm_eval", {}).items():
        typer.echo(f"lm-eval {task}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in values.items()))
    typer.echo(f"report: {out / SUMMARY_MD}")


@app.command("judge")
def judge_command(
    input_path: Path = typer.Option(..., "--input", "-i", help="CSV, JSON or JSONL file."),
    prompt_column: str = typer.Option("prompt", "--prompt-column"),
    response_column: str = typer.Option("response", "--response-column"),
    label_column: str | None = typer.Option(
        None, "--label-column", help="Human refusal labels: prints each judge's agreement."
    ),
    judges: list[str] = typer.Option(
        [],
        "--judges",
        "--judge",
        help="One judge or several, comma-separated: keyword, refusal-lm:PATH, "
        "llamaguard:PATH, classifier:PATH, openai:URL. Several: prints Cohen's kappa.",
    ),
    judge_model: str | None = typer.Option(None, "--judge-model"),
    limit: int | None = typer.Option(
        None, "--limit", help="Judge a fixed-seed random subset of N rows."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit subset."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="JSONL: every row plus each judge's verdict."
    ),
) -> None:
    """Judge existing completions (no model needed): three verdicts per judge, Cohen's κ between
    judges, and with labels each judge's agreement with them."""
    from realignkit.eval import judge_file
    from realignkit.eval.stats import Rate

    def rate(entry: dict) -> str:
        return str(Rate(entry["k"], entry["n"]))

    result = judge_file(
        input_path,
        prompt_column=prompt_column,
        response_column=response_column,
        label_column=label_column,
        judge=judges or ["keyword"],
        out=out,
        judge_model=judge_model,
        limit=limit,
        seed=seed,
    )
    typer.echo(f"rows: {result['n']}")
    for spec, entry in result["judges"].items():
        typer.echo(
            f"{spec}: refusal {rate(entry['refusal_rate'])}, compliance "
            f"{rate(entry['compliance_rate'])}, non-answer {rate(entry['non_answer'])}"
        )
        if "harmful_rate" in entry:
            typer.echo(f"{spec}: harmful {rate(entry['harmful_rate'])}")
        agreement = entry.get("agreement")
        if agreement:
            low, high = agreement["ci95"]
            typer.echo(
                f"{spec}: agreement with {label_column}: accuracy {agreement['accuracy']:.3f} "
                f"[{low:.3f}, {high:.3f}] (n={agreement['n']}), kappa {_fmt(agreement['kappa'])}, "
                f"precision {_fmt(agreement['precision'])}, recall {_fmt(agreement['recall'])}"
            )
            typer.echo("                 judge refused  judge not refused")
            typer.echo(f"label refused    {agreement['tp']:>13}  {agreement['fn']:>17}")
            typer.echo(f"label complied   {agreement['fp']:>13}  {agreement['tn']:>17}")
    for pair, kappa in result["kappa"].items():
        typer.echo(f"Cohen's kappa, {pair} (three verdicts): {_fmt(kappa)}")
    if out is not None:
        typer.echo(f"written: {out}")


@app.command("compare")
def compare_command(
    reports: list[Path] = typer.Argument(..., help="Report folders written by `realignkit eval`."),
    out: Path | None = typer.Option(
        Path("safety_utility.png"), "--out", "-o", help="Scatter plot (PNG) of safety vs utility."
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Print the table only."),
) -> None:
    """Side-by-side table of reports and a safety-versus-utility scatter, one point per model."""
    from realignkit.eval import compare_reports

    table, _ = compare_reports(list(reports), plot=None if no_plot else out)
    typer.echo(table, nl=False)
    if not no_plot:
        typer.echo(f"plot: {out}")
