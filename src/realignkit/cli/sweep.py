"""`realignkit sweep`: options in, the sweep run, the table printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from realignkit.cli.app import app


@app.command("sweep")
def sweep_cmd(
    config: Annotated[
        Path, typer.Option(help="Sweep YAML: models, methods with their grids, eval settings.")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Sweep folder; an existing one is resumed, not redone."),
    ],
) -> None:
    """Build every method setting of a grid, evaluate each, and draw harmfulness against utility
    with the Pareto front marked. A rerun only does what is missing from OUT/results.jsonl."""
    from realignkit.sweep import load_config, run_sweep

    result = run_sweep(load_config(config), out, base_dir=config.resolve().parent)
    typer.echo(result.table_md.read_text(encoding="utf-8"))
    typer.echo(
        f"{len(result.rows)} variants ({result.built} built, {result.evaluated} evaluated now); "
        f"table {result.table_md}, {result.table_json}"
        + (f", plot {result.plot}" if result.plot else "")
    )
