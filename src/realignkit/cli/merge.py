"""`realignkit safety-vector` and `realignkit resta`: streaming weight edits."""

from __future__ import annotations

from typing import Annotated

import typer

from realignkit.cli.app import app
from realignkit.cli.options import (
    Adapter,
    AllowPickle,
    Finetuned,
    Out,
    Overwrite,
    SafetyVectorDir,
    ShardSize,
    Workers,
)
from realignkit.ops.selection import DEFAULT_SCOPE_HELP


@app.command("safety-vector")
def safety_vector_cmd(
    aligned: Annotated[str, typer.Option(help="The safety-aligned model (folder or hub id).")],
    out: Out,
    unaligned: Annotated[
        str | None, typer.Option(help="The aligned model fine-tuned on harmful QA.")
    ] = None,
    unaligned_adapter: Annotated[
        str | None,
        typer.Option(help="A LoRA adapter trained on top of --aligned on harmful QA (low-rank v)."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Stored precision (default: as the aligned model).")
    ] = None,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    max_shard_size: ShardSize = "1GB",
    workers: Workers = 2,
) -> None:
    """Write the safety vector v = θ_aligned − θ_unaligned (dense, or low-rank from an adapter)."""
    from realignkit.methods.safety_vector import compute_safety_vector
    from realignkit.modeling import parse_dtype

    path = compute_safety_vector(
        aligned,
        out,
        unaligned=unaligned,
        unaligned_adapter=unaligned_adapter,
        dtype=parse_dtype(dtype),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        max_shard_size=max_shard_size,
        workers=workers,
    )
    typer.echo(f"safety vector written to {path}")


@app.command(
    "resta",
    help=(
        "Re-align a fine-tuned model: θ_F + γ·v, optionally with DARE on θ_F − θ_B. "
        + DEFAULT_SCOPE_HELP
    ),
)
def resta_cmd(
    safety_vector: SafetyVectorDir,
    out: Out,
    finetuned: Finetuned = None,
    base: Annotated[
        str | None,
        typer.Option(help="The model the fine-tune started from (needed by --dare and --adapter)."),
    ] = None,
    adapter: Adapter = None,
    gamma: Annotated[float, typer.Option(help="Weight γ of the safety vector.")] = 0.5,
    dare: Annotated[
        float | None,
        typer.Option(help="DARE drop rate p in [0, 1) on θ_F − θ_B; kept entries × 1/(1−p)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the DARE masks (per tensor name).")] = 0,
    dare_stream: Annotated[
        str,
        typer.Option(
            help="Random stream of the DARE masks: pcg64 (fast, default) or mt19937 "
            "(the stream of realignkit 0.1 outputs)."
        ),
    ] = "pcg64",
    include: Annotated[
        list[str] | None,
        typer.Option(help="Also edit: embeddings, norms, biases, lm_head, other, or all."),
    ] = None,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    max_shard_size: ShardSize = "1GB",
    workers: Workers = 2,
) -> None:
    from realignkit.checkpoint import FinetunedWeights
    from realignkit.methods.resta import resta
    from realignkit.methods.safety_vector import SafetyVector

    with (
        FinetunedWeights(finetuned, base=base, adapter=adapter, allow_pickle=allow_pickle) as ft,
        SafetyVector(safety_vector) as sv,
    ):
        result = resta(
            ft,
            sv,
            out,
            gamma=gamma,
            dare_p=dare,
            seed=seed,
            dare_stream=dare_stream,
            include=include,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
            workers=workers,
        )
    typer.echo(
        f"re-aligned model written to {result.path} "
        f"({len(result.edited)} tensors edited, {len(result.copied)} copied)"
    )
