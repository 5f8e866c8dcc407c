"""The typer application object that every command module registers itself on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="realignkit",
    help="Restore the safety of fine-tuned language models: safety vectors, RESTA, DARE, IRR, "
    "Safe LoRA, and the evaluation to measure them. Exit codes: 0 done, 2 bad input, "
    "130 interrupted, 1 unexpected (add --debug for the traceback).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
