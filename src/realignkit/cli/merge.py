"""`realignkit safety-vector` (RESTA's command is built from its declaration: cli/methods.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from realignkit.cli.app import app
from realignkit.cli.options import AllowPickle, Out, Overwrite, ShardSize, Workers


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
