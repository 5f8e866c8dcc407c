"""What `realignkit safelora` adds to Safe LoRA's declared options: ``--full``.

The command is built from the declaration (:data:`realignkit.methods.safelora.SAFELORA`, see
``cli/methods.py``). ``--adapter`` (a LoRA adapter trained on ``--aligned``, the default) runs
:data:`~realignkit.methods.safelora.SAFELORA` and writes an adapter; ``--full --finetuned``
runs its full fine-tune variant and writes a model.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Any

import typer

from realignkit.cli.methods import KW, Command, method_command
from realignkit.contract import Method
from realignkit.errors import RealignError
from realignkit.methods.safelora import SAFELORA, SAFELORA_FULL

if TYPE_CHECKING:
    from realignkit.execute import Output


def _variant(options: dict[str, Any]) -> Method:
    """The adapter or the full fine-tune variant, and the inputs each reads."""
    if options.pop("full"):
        if options["finetuned"] is None:
            raise RealignError("--full needs --finetuned, the fully fine-tuned model")
        if options["adapter"] is not None:
            raise RealignError("give --adapter, or --full with --finetuned, not both")
        return SAFELORA_FULL
    if options["finetuned"] is not None:
        raise RealignError("--finetuned goes with --full (a full fine-tune)")
    if options["adapter"] is None:
        raise RealignError("give --adapter (a LoRA adapter), or --full with --finetuned")
    options["base"] = options["aligned"]  # the adapter was trained on the aligned model
    return SAFELORA


def _written(output: Output) -> str:
    projected = sum(bool(s["projected"]) for s in output.stats.values())
    return (
        f"Safe LoRA {output.form} written to {output.path} "
        f"({projected} of {len(output.stats)} layers projected)"
    )


FULL = inspect.Parameter(
    "full",
    KW,
    annotation=Annotated[
        bool, typer.Option(help="Project a full fine-tune (--finetuned) instead of an adapter.")
    ],
    default=False,
)
method_command(
    SAFELORA, Command(extra=[FULL], hide=frozenset({"base"}), prepare=_variant, report=_written)
)
