"""`realignkit demo`: the miniature world, from scratch to re-aligned, on a CPU in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from realignkit.cli.app import app

Opt = typer.Option


@app.command("demo")
def demo_command(
    out: Annotated[
        Path, Opt("--out", "-o", help="Folder for every checkpoint, report, table and the plot.")
    ] = Path("demo-out"),
    seeds: Annotated[int, Opt(help="Run the world with seeds 0..N-1; report mean ± sd.")] = 1,
    size: Annotated[
        str, Opt(help="tiny (a CPU, minutes), or small, medium, large (for a GPU).")
    ] = "tiny",
    fast: Annotated[
        bool, Opt(help="The reduced world of the test suite (seconds, rough numbers).")
    ] = False,
    methods: Annotated[
        str | None, Opt(help="Comma-separated re-alignment methods [default: all in the package].")
    ] = None,
    overwrite: Annotated[bool, Opt(help="Start again in an existing demo folder.")] = False,
    sweep: Annotated[
        bool,
        Opt(help="Also sweep every method's strength on seed 0 (`realignkit sweep`, Pareto plot)."),
    ] = False,
) -> None:
    """Train a small chat model from scratch, align it, fine-tune it (its refusals are lost),
    re-align it with every method in the package, and evaluate every model."""
    from realignkit.demo.pipeline import degradation, run_demo

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    result = run_demo(
        out, seeds=seeds, size=size, fast=fast, methods=chosen, overwrite=overwrite, sweep=sweep
    )
    typer.echo(result.table)
    gains = ", ".join(
        f"{name} +{100 * gain:.1f} points" for name, gain in degradation(result.rows).items()
    )
    typer.echo(f"\nheld-out harmful requests answered, more than `aligned`: {gains}")
    typer.echo(
        f"written: {result.out / 'results.json'}, {result.out / 'results.md'}, "
        f"{result.out / 'safety_utility.png'} ({result.seconds:.0f} s)"
    )
    if sweep:
        sweeps = [result.out / f"sweep-{kind}" / "sweep.md" for kind in ("full", "lora")]
        typer.echo(f"sweeps: {sweeps[0]}, {sweeps[1]}")
