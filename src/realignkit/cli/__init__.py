"""Command line: `realignkit <command>`.

Each command group lives in its own module and registers itself on :data:`app` when
imported. Modules only parse options, call the Python API and print; no logic lives here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback

from realignkit.checkpoint.writer import is_disk_full
from realignkit.cli import demo as _demo  # noqa: E402,F401  demo
from realignkit.cli import evaluate as _evaluate  # noqa: E402,F401  eval, judge, compare
from realignkit.cli import irr as _irr  # noqa: E402,F401  fisher, irr

# Importing a module registers its commands on `app`.
from realignkit.cli import merge as _merge  # noqa: E402,F401  safety-vector, resta
from realignkit.cli import methods as _methods  # noqa: E402  every declared method
from realignkit.cli import plan as _plan  # noqa: E402,F401  plan
from realignkit.cli import safelora as _safelora  # noqa: E402,F401  safelora
from realignkit.cli import sweep as _sweep  # noqa: E402,F401  sweep
from realignkit.cli import train as _train  # noqa: E402,F401  finetune, unalign
from realignkit.cli import tune as _tune  # noqa: E402,F401  tune
from realignkit.cli.app import app
from realignkit.cli.guard import Interrupted, guard_commands
from realignkit.errors import InvalidValue, RealignError

_methods.register_all()  # the declared methods' commands, before the guard wraps them
guard_commands(app)

# Exit codes: what scripts and schedulers can rely on.
EXIT_DONE, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
INTERRUPTED_MESSAGE = "interrupted: nothing was written"


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``with`` block removes what it started."""
    raise KeyboardInterrupt


def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(message, file=sys.stderr)
    sys.exit(code)


def _kinds(err: BaseException) -> set[str]:
    """Class names up the MRO: typer vendors click, so its exceptions are matched by name."""
    return {cls.__name__ for cls in type(err).__mro__}


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exit 0 done, 2 bad input (one ``error:`` line), 130 interrupted (Ctrl-C or
    SIGTERM), 1 unexpected; ``--debug`` (anywhere) or ``REALIGNKIT_DEBUG=1`` adds tracebacks."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("REALIGNKIT_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        code = app(args=args, standalone_mode=False)
    except RealignError as err:
        _fail(f"error: {in_cli_words(err)}", EXIT_BAD_INPUT, debug)
    except (Interrupted, KeyboardInterrupt):
        _fail(INTERRUPTED_MESSAGE, EXIT_INTERRUPTED, debug)
    except SystemExit:
        raise
    except Exception as err:
        kinds = _kinds(err)
        if "Abort" in kinds:  # click's name for an interrupted prompt
            _fail(INTERRUPTED_MESSAGE, EXIT_INTERRUPTED, debug)
        if "UsageError" in kinds:  # a bad option value: one line too
            ctx = getattr(err, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _fail(f"error: {err.format_message()}{hint}", EXIT_BAD_INPUT, debug)  # type: ignore[attr-defined]
        if "ClickException" in kinds:
            err.show()  # type: ignore[attr-defined]
            sys.exit(err.exit_code)  # type: ignore[attr-defined]
        if is_disk_full(err):  # outside the checkpoint writer (e.g. eval's report)
            _fail(f"error: no space left on the device ({err})", EXIT_BAD_INPUT, debug)
        _unexpected(err, debug)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if code == EXIT_INTERRUPTED:  # typer's own Exit(130): an interrupt while parsing
        _fail(INTERRUPTED_MESSAGE, EXIT_INTERRUPTED, debug)
    if isinstance(code, int) and code:
        sys.exit(code)


def in_cli_words(err: RealignError) -> str:
    """The message as the command line says it: a value that the math refuses (``ops/`` names
    it as the math does: ``R must be in [0, 1]``) is named by its option (``--rho``), the
    option every declared parameter gets from its name."""
    if isinstance(err, InvalidValue) and err.parameter:
        return err.named("--" + err.parameter.replace("_", "-"))
    return str(err)


def _unexpected(err: BaseException, debug: bool) -> None:
    hint = "" if debug else " (this is a bug: run again with --debug for the traceback)"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    _fail(f"error: unexpected {type(err).__name__}: {first}{hint}", EXIT_UNEXPECTED, debug)


__all__ = ["app", "main"]
