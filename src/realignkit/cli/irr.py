"""`realignkit fisher` and `realignkit irr`: options in, Python API called, one line out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from realignkit.cli.app import app
from realignkit.cli.options import (
    Adapter,
    AllowPickle,
    Device,
    DeviceMapOption,
    Finetuned,
    MaxMemory,
    Out,
    Overwrite,
    SafetyVectorDir,
    Seed,
    ShardSize,
)

Dtype = Annotated[
    str | None, typer.Option(help="Precision of the model's forward passes (default: bf16 on GPU).")
]
MaxLength = Annotated[int, typer.Option(help="Tokens per sample at most (longer ones are cut).")]
NumSamples = Annotated[int, typer.Option(help="Samples drawn from the data file (seeded).")]
BatchSize = Annotated[int, typer.Option(help="Sequences per forward pass.")]
Modules = Annotated[
    str | None,
    typer.Option(help="Comma list of linear layers to use, e.g. q_proj,v_proj (default: all)."),
]
PromptColumn = Annotated[str, typer.Option(help="Column holding the prompts.")]


def _split(modules: str | None) -> list[str] | None:
    if not modules:
        return None
    return [m.strip() for m in modules.split(",") if m.strip()]


@app.command("fisher")
def fisher_cmd(
    model: Annotated[str, typer.Option(help="The safety-aligned model (folder or hub id).")],
    harmful: Annotated[
        Path, typer.Option(help="Harmful prompts with safe responses (JSONL/JSON/CSV).")
    ],
    out: Out,
    mode: Annotated[
        str,
        typer.Option(
            help="per-sample: mean of squared per-sample gradients; per-batch: "
            "squared mini-batch gradients (the official code)."
        ),
    ] = "per-sample",
    modules: Modules = None,
    generate_responses: Annotated[
        bool, typer.Option(help="Let the aligned model write the safe responses first.")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Length of generated responses.")] = 128,
    num_samples: NumSamples = 128,
    max_length: MaxLength = 512,
    batch_size: BatchSize = 8,
    max_accumulator_gib: Annotated[
        float | None,
        typer.Option(
            help="Cap on the fp32 accumulators held on the device at once; more layers "
            "mean one more pass over the data each (e.g. 6 for a 7B model on 24 GB)."
        ),
    ] = None,
    prompt_column: PromptColumn = "prompt",
    response_column: Annotated[
        str, typer.Option(help="Column holding safe responses.")
    ] = "response",
    device: Device = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemory = None,
    dtype: Dtype = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Diagonal Fisher safety importance of the aligned model's weights (for `realignkit irr`)."""
    from realignkit.calib.fisher import compute_fisher
    from realignkit.modeling import parse_dtype

    path = compute_fisher(
        model,
        harmful,
        out,
        mode=mode,
        modules=_split(modules),
        generate=generate_responses,
        num_samples=num_samples,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_accumulator_gib=max_accumulator_gib,
        prompt_column=prompt_column,
        response_column=response_column,
        device=device,
        device_map=device_map,
        max_memory=max_memory,
        dtype=parse_dtype(dtype),
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(f"Fisher scores written to {path}")


@app.command("irr")
def irr_cmd(
    safety_vector: SafetyVectorDir,
    out: Out,
    finetuned: Finetuned = None,
    base: Annotated[
        str | None, typer.Option(help="The model the fine-tune started from (θ_B).")
    ] = None,
    adapter: Adapter = None,
    fisher: Annotated[
        Path | None, typer.Option(help="Folder from `realignkit fisher` (needed by --mask fisher).")
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Downstream-task prompts (+ responses) for recalibration.")
    ] = None,
    rho: Annotated[
        float | None,
        typer.Option(
            help="R: fraction of sign-conflicting entries removed, in [0, 1] "
            "(default 0.5; the official --sparsity s is R = 1 - s)."
        ),
    ] = None,
    sparsity: Annotated[
        float | None, typer.Option(help="The official code's knob: same as --rho 1-s.")
    ] = None,
    budget: Annotated[
        str, typer.Option(help="Rank within each 128-column block, per matrix, or globally.")
    ] = "block",
    mask: Annotated[
        str, typer.Option(help="Score that ranks candidates: fisher, magnitude (|δ|), random.")
    ] = "fisher",
    sign: Annotated[
        bool, typer.Option(help="Only sign-conflicting entries are candidates (--no-sign: all).")
    ] = True,
    recalibrate: Annotated[
        bool, typer.Option(help="OBS recalibration of the retained delta.")
    ] = True,
    damping: Annotated[float, typer.Option(help="Damping, a fraction of mean(diag H).")] = 0.01,
    block_size: Annotated[
        int | None, typer.Option(help="Columns per ranking block / OBS batch (default 128).")
    ] = None,
    refine_steps: Annotated[
        int,
        typer.Option(
            help="Conjugate-gradient steps after the SparseGPT sweep, toward the exact "
            "least-squares compensation (0: as the paper)."
        ),
    ] = 0,
    modules: Modules = None,
    official: Annotated[
        bool,
        typer.Option(
            "--official",
            help="Compute what the official IRR code computes: the defaults of every option "
            "below become the official ones (explicit options still win).",
            rich_help_panel="Official behaviour",
        ),
    ] = False,
    mask_selection: Annotated[
        str | None,
        typer.Option(
            help="fixed: one mask on the original delta (default); adaptive: each block's "
            "mask chosen inside the sweep on the updated delta (official).",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    ties: Annotated[
        str | None,
        typer.Option(
            help="Tied scores at the cut: remove the earlier entry (default) or the later "
            "one (official).",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    count_rounding: Annotated[
        str | None,
        typer.Option(
            help="half-up: remove round(R·n) of n candidates (default); keep-floor: keep "
            "floor((1-R)·n) (official).",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    zero_is_conflict: Annotated[
        bool | None,
        typer.Option(
            "--zero-is-conflict/--no-zero-is-conflict",
            help="Count a zero delta or zero safety entry as a sign conflict (official; "
            "default: no).",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    dead_columns: Annotated[
        str | None,
        typer.Option(
            help="Inputs never active on the calibration data (H_jj = 0): keep the retained "
            "delta (default) or zero it (official).",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    hessian_padding: Annotated[
        str | None,
        typer.Option(
            help="real-tokens: right padding left out of H (default); left-eos: sequences "
            "left-padded with EOS to --max-length, every position in H (official).",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    calibration_format: Annotated[
        str | None,
        typer.Option(
            help="chat: the chat template (default); official: Llama-2 system prompt, "
            "'{prompt}\\n{input}', response + EOS.",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    calibration_rows: Annotated[
        str | None,
        typer.Option(
            help="random: a seeded subsample of --num-samples rows (default); first: the "
            "first rows (official).",
            rich_help_panel="Official behaviour",
        ),
    ] = None,
    true_sequential: Annotated[
        bool,
        typer.Option(
            "--true-sequential",
            help="The official driver's flag: edit only q_proj and v_proj.",
            rich_help_panel="Official behaviour",
        ),
    ] = False,
    num_samples: NumSamples = 128,
    max_length: Annotated[
        int | None, typer.Option(help="Tokens per sample at most (default 512).")
    ] = None,
    batch_size: BatchSize = 8,
    min_calibration_tokens: Annotated[
        int | None,
        typer.Option(
            help="Refuse fewer calibration tokens (default: only warn when fewer than the "
            "widest edited layer's inputs)."
        ),
    ] = None,
    prompt_column: PromptColumn = "prompt",
    response_column: Annotated[
        str | None, typer.Option(help="Column of responses (default: 'response' if present).")
    ] = None,
    input_column: Annotated[
        str, typer.Option(help="--calibration-format official: the column of '{input}'.")
    ] = "input",
    text_column: Annotated[
        str | None,
        typer.Option(help="Calibrate on raw text in this column (tokenised as it is)."),
    ] = None,
    ids_column: Annotated[
        str,
        typer.Option(help="Rows with this column are token id lists, used as they are."),
    ] = "input_ids",
    device: Device = None,
    dtype: Dtype = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    max_shard_size: ShardSize = "1GB",
) -> None:
    """IRR: identify unsafe delta entries, reset them to the base model, recalibrate the rest."""
    from realignkit.checkpoint import FinetunedWeights
    from realignkit.errors import RealignError
    from realignkit.methods.irr import TRUE_SEQUENTIAL_MODULES, IRRSettings, irr
    from realignkit.modeling import parse_dtype

    if rho is not None and sparsity is not None:
        raise RealignError("give --rho or --sparsity, not both")
    if sparsity is not None:
        if not 0.0 <= sparsity <= 1.0:
            raise RealignError(f"--sparsity must be in [0, 1], got {sparsity}")
        rho = 1.0 - sparsity
    if true_sequential and modules:
        raise RealignError("give --true-sequential or --modules, not both")
    explicit = {
        "mask_selection": mask_selection,
        "ties": ties,
        "count_rounding": count_rounding,
        "zero_is_conflict": zero_is_conflict,
        "dead_columns": dead_columns,
        "hessian_padding": hessian_padding,
        "calibration_format": calibration_format,
        "calibration_rows": calibration_rows,
        "block_size": block_size,
        "max_length": max_length,
    }
    behaviour = {k: v for k, v in explicit.items() if v is not None}
    make = IRRSettings.official if official else IRRSettings
    settings = make(
        **behaviour,
        rho=0.5 if rho is None else rho,
        budget=budget,
        mask=mask,
        use_sign=sign,
        recalibrate=recalibrate,
        damping=damping,
        refine_steps=refine_steps,
        modules=list(TRUE_SEQUENTIAL_MODULES) if true_sequential else _split(modules),
        num_samples=num_samples,
        batch_size=batch_size,
        min_calibration_tokens=min_calibration_tokens,
        prompt_column=prompt_column,
        response_column=response_column,
        input_column=input_column,
        text_column=text_column,
        ids_column=ids_column,
        seed=seed,
        device=device,
        dtype=parse_dtype(dtype),
    )
    settings.check()
    if base is None:
        raise RealignError("IRR needs --base, the model the fine-tune started from")
    weights = FinetunedWeights(finetuned, base=base, adapter=adapter, allow_pickle=allow_pickle)
    with weights:
        result = irr(
            weights,
            safety_vector,
            out,
            fisher=fisher,
            calibration=calibration,
            settings=settings,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
        )
    typer.echo(
        f"IRR model written to {result.path} "
        f"({result.removed} entries removed in {len(result.layers)} layers)"
    )
