"""What every command gets, whatever it does: its output checked against its inputs before
anything is touched, and Ctrl-C / SIGTERM turned into one clean "interrupted" exit.

:func:`guard_commands` wraps each registered command once, so no command has to remember it.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from realignkit.checkpoint.output import check_output_location

# Parameters that name where a command writes, not what it reads.
OUTPUT_PARAMETERS = ("out", "cache_dir")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while a command ran (its clean-up has run)."""


def _local_paths(value: Any) -> Iterator[Path]:
    """Existing paths named by an option value (``harmful:PATH`` specs included)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _local_paths(item)
        return
    if not isinstance(value, (str, os.PathLike)):
        return
    text = os.fspath(value)
    candidates = [text]
    if isinstance(value, str):
        # Benchmark specs such as harmful:PATH, comma-separated lists of them.
        for part in text.split(","):
            candidates += [part, part.split(":", 1)[-1]]
    for candidate in dict.fromkeys(c for c in candidates if c):
        path = Path(candidate).expanduser()
        if path.exists() or path.is_symlink():
            yield path


def command_inputs(arguments: dict[str, Any]) -> list[Path]:
    """Every existing file or folder a command's options name, apart from its outputs."""
    return [
        path
        for name, value in arguments.items()
        if name not in OUTPUT_PARAMETERS
        for path in _local_paths(value)
    ]


def guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` with its ``out`` checked against its inputs first, and interrupts caught."""
    signature = inspect.signature(callback)

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind_partial(*args, **kwargs).arguments
        for name in OUTPUT_PARAMETERS:
            if arguments.get(name) is not None:
                check_output_location(arguments[name], command_inputs(arguments))
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt:
            # typer would turn it into a silent Exit(130); main() prints the one line.
            raise Interrupted() from None

    return run


def guard_commands(app: typer.Typer) -> None:
    """Wrap every command registered on ``app`` (idempotent); every command that
    ``realignkit plan`` knows also gets ``--dry-run``, ahead of the output check (a dry run
    touches nothing)."""
    from realignkit.cli.plan import with_dry_run
    from realignkit.plan import planned_commands

    planned = planned_commands()
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_guarded", False):
            info.callback = guarded(info.callback)
            if info.name in planned:
                info.callback = with_dry_run(info.name, info.callback)
            info.callback._guarded = True  # type: ignore[attr-defined]
