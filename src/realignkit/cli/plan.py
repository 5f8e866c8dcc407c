"""`realignkit plan COMMAND ...`: the bytes and memory a command needs, before it runs."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from realignkit.cli.app import app

# CLI spellings whose Python names differ from the option's (`-o`, `--safety-model`...).
ALIASES = {"o": "out", "m": "model", "safety_model": "safety_finetune", "dare": "dare_p"}


def parse_options(args: list[str]) -> dict[str, object]:
    """``--name value`` / ``--flag`` / ``--no-flag`` → {name: value} (names with underscores).

    Repeated options collect into a list. The planned command's own parser is not run: only
    the options that change what it reads or holds are used, the rest are ignored.
    """
    options: dict[str, object] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("-"):
            i += 1
            continue
        key, sep, value = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not sep:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or following.startswith("--"):
                value, flag = ("false", key[3:]) if key.startswith("no_") else ("true", key)
                key = flag
            else:
                value = following
                i += 1
        key = ALIASES.get(key, key)
        if key in options:
            previous = options[key]
            options[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            options[key] = value
        i += 1
    return options


@app.command(
    "plan",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def plan_cmd(
    ctx: typer.Context,
    command: Annotated[
        str,
        typer.Argument(
            help="The command to plan: resta (or another method), safety-vector, fisher, irr, "
            "eval, finetune, unalign; then its options as you would give them."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Bytes read and written, peak host and device memory per stage, and whether it fits
    --max-memory: from config.json and the safetensors headers alone (nothing is loaded).
    Exit 3 when a stage does not fit the given --max-memory."""
    from realignkit.plan import plan_command

    plan = plan_command(command, parse_options(list(ctx.args)))
    typer.echo(json.dumps(plan.as_dict(), indent=2, default=str) if as_json else plan.render())
    if plan.limits and plan.problems():
        raise typer.Exit(3)
