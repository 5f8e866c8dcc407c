"""`realignkit finetune` and `realignkit unalign`: supervised fine-tuning, full or LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from realignkit.cli.app import app
from realignkit.cli.options import DeviceMapOption, MaxMemory, Out, Overwrite
from realignkit.errors import RealignError

Opt = typer.Option


def train_command(
    ctx: typer.Context,
    model: Annotated[str, Opt("--model", "-m", help="Model folder or hub id to start from.")],
    data: Annotated[
        Path, Opt("--data", "-d", help="JSONL, JSON or CSV file with prompt and response columns.")
    ],
    out: Out,
    lora: Annotated[
        bool, Opt("--lora/--full", help="Train a PEFT LoRA adapter (default) or every weight.")
    ] = True,
    lora_r: Annotated[int, Opt(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, Opt(help="LoRA alpha (the scale is alpha / r).")] = 32,
    target_modules: Annotated[
        str | None,
        Opt(
            help="LoRA targets, comma-separated (q_proj,v_proj); default: every linear layer "
            "of the blocks."
        ),
    ] = None,
    epochs: Annotated[float, Opt(help="Passes over the data.")] = 1.0,
    max_steps: Annotated[
        int | None, Opt(help="Stop after this many optimizer steps (overrides --epochs).")
    ] = None,
    lr: Annotated[
        float | None, Opt(help="Peak learning rate [default: 2e-4 with LoRA, 2e-5 full].")
    ] = None,
    batch_size: Annotated[int, Opt(help="Rows per device step.")] = 8,
    grad_accum: Annotated[int, Opt(help="Device steps accumulated per optimizer step.")] = 1,
    max_length: Annotated[
        int, Opt(help="Tokens per row, prompt and response; longer rows are cut.")
    ] = 512,
    seed: Annotated[int, Opt(help="Seed of the shuffling, the LoRA init and --limit.")] = 0,
    prompt_column: Annotated[str, Opt(help="Column holding the prompts.")] = "prompt",
    response_column: Annotated[str, Opt(help="Column holding the responses.")] = "response",
    limit: Annotated[
        int | None, Opt(help="Train on a fixed-seed random subset of this many rows.")
    ] = None,
    dtype: Annotated[
        str | None,
        Opt(help="Weights dtype while training [default: bf16 LoRA base on GPU, else float32]."),
    ] = None,
    bf16: Annotated[
        bool | None,
        Opt(
            "--bf16/--no-bf16",
            help="bf16 autocast over fp32 weights [default: where the hardware multiplies bf16 "
            "natively: a bf16 GPU, a CPU with AVX512-BF16 or AMX].",
            show_default=False,
        ),
    ] = None,
    system_prompt: Annotated[str | None, Opt(help="System message before every prompt.")] = None,
    freeze_embeddings: Annotated[
        bool, Opt(help="With --full: keep the input embeddings and the LM head fixed.")
    ] = False,
    gradient_checkpointing: Annotated[
        bool, Opt(help="Trade compute for memory on large models.")
    ] = False,
    train_last_layers: Annotated[
        int | None,
        Opt(
            help="Train only the last N decoder blocks (with --lora: adapters there only); "
            "the backward pass stops at the first of them (a CPU fast path)."
        ),
    ] = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemory = None,
    overwrite: Overwrite = False,
) -> None:
    """Both commands share every option; only the model card they write differs."""
    from realignkit.train import TrainConfig, finetune, load_pairs, unalign

    command = ctx.info_name
    if lora_r < 1 or batch_size < 1 or grad_accum < 1 or max_length < 2:
        raise RealignError("--lora-r, --batch-size, --grad-accum and --max-length must be positive")
    if max_steps is not None and max_steps < 1:
        raise RealignError(f"--max-steps must be positive, got {max_steps}")
    if lr is not None and not lr > 0:
        raise RealignError(f"--lr must be positive, got {lr}")
    targets = (
        [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None
    )
    config = TrainConfig(
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        dtype=dtype,
        bf16=bf16,
        system_prompt=system_prompt,
        freeze_embeddings=freeze_embeddings,
        gradient_checkpointing=gradient_checkpointing,
        train_last_layers=train_last_layers,
        device_map=device_map,
        max_memory=max_memory,
    )
    rows = load_pairs(
        data, prompt_column=prompt_column, response_column=response_column, limit=limit, seed=seed
    )
    run = unalign if command == "unalign" else finetune
    written = run(model, rows, out, config, overwrite=overwrite, data_name=str(data))
    kind = "LoRA adapter" if lora else "model"
    typer.echo(f"{command}: trained on {len(rows)} rows, {kind} written to {written}")


app.command(
    "finetune",
    help="Fine-tune a model on prompt/response pairs, loss on the responses only, through the "
    "model's chat template: a LoRA adapter by default, every weight with --full (bf16 on a GPU).",
)(train_command)
app.command(
    "unalign",
    help="Fine-tune an aligned model on harmful prompts with compliant responses: the unaligned "
    "model of a safety vector (then `realignkit safety-vector --aligned A --unaligned OUT`).",
)(train_command)
