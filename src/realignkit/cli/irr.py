"""`realignkit fisher`, and what `realignkit irr` adds to IRR's declared options.

`realignkit irr` is built from the declaration (:data:`realignkit.methods.irr.IRR`, see
``cli/methods.py``), plus the official code's own spellings: ``--sparsity`` and
``--true-sequential``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from realignkit.cli.app import app
from realignkit.cli.methods import KW, Command, method_command
from realignkit.cli.options import (
    Device,
    DeviceMapOption,
    Dtype,
    MaxMemory,
    Out,
    Overwrite,
    Seed,
)
from realignkit.contract import Method
from realignkit.errors import RealignError

if TYPE_CHECKING:
    from realignkit.execute import Output

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


def _irr_options(options: dict[str, Any]) -> Method:
    """The official code's knobs as IRR's parameters: ``--sparsity s`` is ``--rho 1-s``,
    ``--true-sequential`` edits q_proj and v_proj only."""
    from realignkit.methods.irr import IRR, TRUE_SEQUENTIAL_MODULES

    sparsity, true_sequential = options.pop("sparsity"), options.pop("true_sequential")
    if sparsity is not None:
        if options["rho"] is not None:
            raise RealignError("give --rho or --sparsity, not both")
        options["rho"] = 1.0 - IRR.param("rho").check(sparsity, "--sparsity")
    if true_sequential:
        if options["modules"]:
            raise RealignError("give --true-sequential or --modules, not both")
        options["modules"] = list(TRUE_SEQUENTIAL_MODULES)
    return IRR


def _irr_written(output: Output) -> str:
    removed = sum(s["removed"] for s in output.stats.values())
    return (
        f"IRR model written to {output.path} "
        f"({removed} entries removed in {len(output.stats)} layers)"
    )


def _register_irr() -> None:
    from realignkit.methods.irr import IRR, OFFICIAL_PANEL

    extra = [
        inspect.Parameter(
            "sparsity",
            KW,
            annotation=Annotated[
                float | None,
                typer.Option(
                    help="The official code's knob: the same as --rho 1-s.",
                    rich_help_panel=OFFICIAL_PANEL,
                ),
            ],
            default=None,
        ),
        inspect.Parameter(
            "true_sequential",
            KW,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--true-sequential",
                    help="The official driver's flag: edit only q_proj and v_proj.",
                    rich_help_panel=OFFICIAL_PANEL,
                ),
            ],
            default=False,
        ),
    ]
    method_command(IRR, Command(extra=extra, prepare=_irr_options, report=_irr_written))


_register_irr()
