"""Command line: `realignkit <command>`.

Each command group lives in its own module and registers itself on :data:`app` when
imported. Modules only parse options, call the Python API and print; no logic lives here.
"""

from __future__ import annotations

import logging
import sys

from realignkit.cli import demo as _demo  # noqa: E402,F401  demo
from realignkit.cli import evaluate as _evaluate  # noqa: E402,F401  eval, judge, compare
from realignkit.cli import irr as _irr  # noqa: E402,F401  fisher, irr

# Importing a module registers its commands on `app`.
from realignkit.cli import merge as _merge  # noqa: E402,F401  safety-vector, resta
from realignkit.cli import methods as _methods  # noqa: E402  every declared method
from realignkit.cli import safelora as _safelora  # noqa: E402,F401  safelora
from realignkit.cli import sweep as _sweep  # noqa: E402,F401  sweep
from realignkit.cli import train as _train  # noqa: E402,F401  finetune, unalign
from realignkit.cli import tune as _tune  # noqa: E402,F401  tune
from realignkit.cli.app import app
from realignkit.errors import RealignError

_methods.register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning :class:`RealignError` into one line and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app(args=argv, standalone_mode=False)
    except RealignError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as err:  # click's usage errors, aborts
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise


__all__ = ["app", "main"]
