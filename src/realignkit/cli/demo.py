"""`realignkit demo`: safety lost and restored, on SmolLM2-135M-Instruct (default) or in the
miniature world trained from scratch (``--world toy``)."""

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
    world: Annotated[
        str,
        Opt(help="real: SmolLM2-135M-Instruct (pretrained); toy: a 0.45 M model from scratch."),
    ] = "real",
    preset: Annotated[
        str,
        Opt(
            help="Real world: demo (2 CPU cores: about 35 min), benchmark (CPU, hours), "
            "gpu (one GPU)."
        ),
    ] = "demo",
    data_dir: Annotated[
        Path | None,
        Opt(
            help="Real world: the data folder (CatQA, XSTest, GSM8K) [default: "
            "$REALIGNKIT_DATA_DIR, ./data, ../shared/data]."
        ),
    ] = None,
    threads: Annotated[
        str, Opt(help="Real world: torch CPU threads, or auto (the cores not busy at start).")
    ] = "auto",
    keep_models: Annotated[
        bool,
        Opt(
            help="Real world: keep every re-aligned model (0.54 GB each); --no-keep-models "
            "deletes each once evaluated."
        ),
    ] = True,
    seeds: Annotated[int, Opt(help="Toy world: run with seeds 0..N-1; report mean ± sd.")] = 1,
    size: Annotated[
        str, Opt(help="Toy world: tiny (a CPU, minutes), or small, medium, large (for a GPU).")
    ] = "tiny",
    fast: Annotated[
        bool, Opt(help="Toy world: the reduced world of the test suite (seconds, rough numbers).")
    ] = False,
    methods: Annotated[
        str | None,
        Opt(help="Toy world: comma-separated re-alignment methods [default: all in the package]."),
    ] = None,
    overwrite: Annotated[bool, Opt(help="Start again in an existing demo folder.")] = False,
    sweep: Annotated[
        bool,
        Opt(help="Toy world: also sweep every method's strength on seed 0 (Pareto plot)."),
    ] = False,
) -> None:
    """Align a chat model, fine-tune it on GSM8K (its refusals are lost), re-align it with every
    method in the package, and evaluate every model. Stages are cached: a rerun resumes."""
    from realignkit.errors import RealignError

    if world == "real":
        _real(out, preset, data_dir, threads, overwrite, keep_models)
        return
    if world != "toy":
        raise RealignError(f"unknown world {world!r}; use real or toy")
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
        sweeps = [result.out / "seed-0" / f"sweep-{kind}" / "sweep.md" for kind in ("full", "lora")]
        typer.echo(f"sweeps with every method's grid: {sweeps[0]}, {sweeps[1]}")


def _real(
    out: Path,
    preset: str,
    data_dir: Path | None,
    threads: str,
    overwrite: bool,
    keep_models: bool,
) -> None:
    import logging
    import shutil

    from realignkit.demo.real import run_real

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True
    )
    for noisy in ("httpx", "transformers", "realignkit.eval", "realignkit.sweep"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if overwrite and out.exists():
        shutil.rmtree(out)
    result = run_real(
        out, preset=preset, data_dir=data_dir, threads=threads, keep_models=keep_models
    )
    if result.results_md is not None:
        typer.echo(result.results_md.read_text(encoding="utf-8"))
    typer.echo(
        f"written: {result.results_md}, {result.out / 'results.json'}, "
        f"{result.out / 'safety_utility.png'} ({result.seconds:.0f} s this run, "
        f"peak RSS {result.peak_rss_gb:.2f} GB, {result.threads} torch thread(s))"
    )
