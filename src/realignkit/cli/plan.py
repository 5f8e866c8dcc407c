"""`realignkit plan COMMAND ...`: the bytes and memory a command needs, before it runs."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

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
            # A flag is followed by the next option (long, or short as `-o`), not by a value
            # (which may be a negative number).
            if following is None or re.match(r"--|-[A-Za-z]", following):
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
            help="The command to plan: any declared method's command (resta, irr, safelora, "
            "...), safety-vector, fisher, eval, finetune, unalign; then its options as you "
            "would give them (or give that command --dry-run)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Bytes read and written, peak host and device memory per stage, and whether it fits
    --max-memory: from config.json and the safetensors headers alone (nothing is loaded).
    Exit 3 when a stage does not fit the given --max-memory."""
    show_plan(command, parse_options(list(ctx.args)), as_json=as_json)


def show_plan(command: str, options: Mapping[str, Any], *, as_json: bool = False) -> None:
    """Print the plan of ``realignkit COMMAND`` with ``options``; exit 3 when it does not fit
    the given --max-memory. ``realignkit plan`` and every command's ``--dry-run`` end here."""
    from realignkit.plan import plan_command

    plan = plan_command(command, options)
    typer.echo(json.dumps(plan.as_dict(), indent=2, default=str) if as_json else plan.render())
    if plan.limits and plan.problems():
        raise typer.Exit(3)


DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print what the command would read, write and hold (the plan of `realignkit plan "
        "COMMAND ...`) and exit without loading or writing anything (exit 3 when it does not "
        "fit --max-memory).",
    ),
]


def planned_value(value: Any) -> Any:
    """A parsed option value as the planner reads it (paths as text, lists item by item)."""
    if isinstance(value, (list, tuple)):
        return [planned_value(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def with_dry_run(command: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` with a ``--dry-run`` option that shows the command's plan instead of
    running it: the command's own parsed options (names with underscores, as ``plan`` takes
    them) go to the planner, so both print the same figures."""
    signature = inspect.signature(callback, eval_str=True)

    @functools.wraps(callback)
    def run(*args: Any, dry_run: bool = False, **kwargs: Any) -> Any:
        if not dry_run:
            return callback(*args, **kwargs)
        arguments = signature.bind_partial(*args, **kwargs).arguments
        options = {
            name: planned_value(value)
            for name, value in arguments.items()
            # Unset options take the planner's defaults, as in `plan`; the context is typer's.
            if value is not None and not isinstance(value, typer.Context)
        }
        show_plan(command, options)

    parameters = [
        *signature.parameters.values(),
        inspect.Parameter(
            "dry_run", inspect.Parameter.KEYWORD_ONLY, annotation=DryRun, default=False
        ),
    ]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run
