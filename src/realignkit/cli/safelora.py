"""`realignkit safelora`: options in, Safe LoRA called, one line out."""

from __future__ import annotations

from typing import Annotated

import typer

from realignkit.cli.app import app
from realignkit.cli.options import AllowPickle, Out, Overwrite, Workers


@app.command("safelora")
def safelora_cmd(
    aligned: Annotated[
        str, typer.Option(help="The safety-aligned chat model W_A the fine-tune started from.")
    ],
    pretrained: Annotated[
        str, typer.Option(help="The pre-trained base W_P that W_A was aligned from.")
    ],
    out: Out,
    adapter: Annotated[
        str | None, typer.Option(help="The PEFT LoRA adapter (trained on --aligned) to project.")
    ] = None,
    full: Annotated[
        bool, typer.Option(help="Project a full fine-tune (--finetuned) instead of an adapter.")
    ] = False,
    finetuned: Annotated[
        str | None, typer.Option(help="With --full: the fully fine-tuned model W_F.")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Project layers whose cosine similarity is at most this (default 0.5)."),
    ] = None,
    num_layers: Annotated[
        int | None, typer.Option(help="Project the K least similar layers instead.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Where the products run (default: cuda if present, else cpu)."),
    ] = None,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    max_shard_size: Annotated[
        str, typer.Option(help="Largest output shard (--full; adapters are one file).")
    ] = "1GB",
    workers: Workers = 2,
) -> None:
    """Safe LoRA: project the least aligned layers' updates onto the alignment subspace.

    For each weight, C = V·Vᵀ/‖V‖_F with V = W_aligned − W_pretrained; where the cosine
    similarity between C·B·A and B·A is at most --threshold (or for the --num-layers least
    similar layers), B becomes C·B. --full projects each block weight's ΔW = W_F − W_A instead.
    """
    from realignkit.errors import RealignError
    from realignkit.methods.safelora import check_selection, safelora_adapter, safelora_full

    check_selection(threshold, num_layers)
    if full:
        if finetuned is None:
            raise RealignError("--full needs --finetuned, the fully fine-tuned model")
        if adapter is not None:
            raise RealignError("give --adapter, or --full with --finetuned, not both")
        result = safelora_full(
            finetuned,
            aligned,
            pretrained,
            out,
            threshold=threshold,
            num_layers=num_layers,
            overwrite=overwrite,
            allow_pickle=allow_pickle,
            max_shard_size=max_shard_size,
            device=device,
            workers=workers,
        )
        kind = "model"
    else:
        if finetuned is not None:
            raise RealignError("--finetuned goes with --full (a full fine-tune)")
        if adapter is None:
            raise RealignError("give --adapter (a LoRA adapter), or --full with --finetuned")
        result = safelora_adapter(
            adapter,
            aligned,
            pretrained,
            out,
            threshold=threshold,
            num_layers=num_layers,
            overwrite=overwrite,
            allow_pickle=allow_pickle,
            device=device,
            workers=workers,
        )
        kind = "adapter"
    typer.echo(
        f"Safe LoRA {kind} written to {result.path} "
        f"({len(result.projected)} of {len(result.layers)} layers projected)"
    )
