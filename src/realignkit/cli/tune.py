"""`realignkit tune`: options in, the search run, its path printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from realignkit.cli.app import app
from realignkit.cli.options import Adapter, Device, Finetuned

Split = Annotated[Path | None, typer.Option(help="Prompts (JSONL/JSON/CSV, 'prompt' column).")]


@app.command("tune")
def tune_cmd(
    method: Annotated[str, typer.Option(help="A declared method (`realignkit <method> --help`).")],
    param: Annotated[
        str, typer.Option(help="Its strength parameter (declared with a `safer` direction).")
    ],
    target_harmfulness: Annotated[
        float, typer.Option(help="Highest acceptable harmfulness on the validation split.")
    ],
    aligned: Annotated[
        str, typer.Option(help="The safety-aligned model the fine-tune started from.")
    ],
    validation_harmful: Annotated[Path, typer.Option(help="Harmful prompts the search probes.")],
    test_harmful: Annotated[
        Path, typer.Option(help="Harmful prompts for the final evaluation (disjoint).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder: cached models, tune.json.")],
    finetuned: Finetuned = None,
    adapter: Adapter = None,
    safety_vector: Annotated[
        Path | None,
        typer.Option(help="Folder from `realignkit safety-vector`, for methods that need it."),
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="The pre-trained model, for methods that need it.")
    ] = None,
    safety_model: Annotated[
        str | None, typer.Option(help="A safety fine-tune of --aligned, for methods that need it.")
    ] = None,
    safety_data: Annotated[
        Path | None,
        typer.Option(help="Harmful prompts with safe responses, for methods that need them."),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="Downstream-task rows, for methods that recalibrate on them (IRR)."),
    ] = None,
    max_over_refusal: Annotated[
        float | None, typer.Option(help="Highest acceptable over-refusal (validation benign).")
    ] = None,
    validation_benign: Split = None,
    test_benign: Split = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Fix another parameter of the method: NAME=VALUE."),
    ] = None,
    low: Annotated[float | None, typer.Option(help="Search from (default: declared).")] = None,
    high: Annotated[float | None, typer.Option(help="Search to (default: declared).")] = None,
    steps: Annotated[int, typer.Option(help="Bisection steps after the two ends.")] = 5,
    grid: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated values: judge each on the whole validation split instead of "
            "searching (the exhaustive baseline), keep the weakest that meets the target."
        ),
    ] = None,
    chunk: Annotated[int, typer.Option(help="Prompts judged between interval checks.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per greedy answer.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    judge: Annotated[str, typer.Option(help="Judge spec (see `realignkit eval`).")] = "keyword",
    device: Device = None,
    seed: Annotated[int, typer.Option(help="Seed of the method (DARE masks, data sample).")] = 0,
) -> None:
    """Find the weakest setting of a strength parameter whose harmfulness meets a target, by
    bisection over its declared range with early-stopping probes; evaluate it on a test split."""
    from realignkit.errors import RealignError
    from realignkit.methods.registry import RealignJob
    from realignkit.tuning import path_text, tune

    fixed = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RealignError(f"--set takes NAME=VALUE, got {item!r}")
        fixed[key.strip()] = value.strip()
    job = RealignJob(
        aligned=Path(aligned),
        safety_vector=safety_vector or Path(out) / "no-safety-vector",
        finetuned=Path(finetuned) if finetuned else None,
        adapter=Path(adapter) if adapter else None,
        pretrained=Path(pretrained) if pretrained else None,
        safety_model=Path(safety_model) if safety_model else None,
        harmful=safety_data,
        calibration=calibration,
        workdir=Path(out) / "work",
        seed=seed,
        params=fixed,
    )
    result = tune(
        method,
        param,
        target_harmfulness=target_harmfulness,
        job=job,
        validation_harmful=validation_harmful,
        test_harmful=test_harmful,
        validation_benign=validation_benign,
        test_benign=test_benign,
        max_over_refusal=max_over_refusal,
        out_dir=out,
        low=low,
        high=high,
        steps=steps,
        chunk=chunk,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        judge=judge,
        device=device,
        grid=None if grid is None else [v.strip() for v in grid.split(",") if v.strip()],
    )
    typer.echo(path_text(result))
