"""The one exception type users see.

Everything that is the user's fault (a wrong path, mismatched shapes, NaN in a checkpoint,
a bad option value) raises :class:`RealignError` with a one-line message that names the file
or tensor. The CLI prints the message and exits with code 2 instead of a traceback.
"""

from __future__ import annotations


class RealignError(Exception):
    """A user-facing error: the message is one line and says what to fix."""


class InvalidValue(RealignError, ValueError):
    """A value the math does not allow, said in the math's words (``R must be in [0, 1]``).

    The pure layers (``ops/``) know no command line: they name a value as the math does and
    give the declared ``parameter`` it comes from (``rho``), so a front end can say the same
    in its own words (:meth:`named`; the CLI says ``--rho must be in [0, 1]``). It is a
    :class:`ValueError` for Python callers and a :class:`RealignError` for the CLI.
    """

    def __init__(self, template: str, *, name: str = "", parameter: str | None = None) -> None:
        self.template = template  # "{name}" stands where the value's name goes
        self.name = name
        self.parameter = parameter
        super().__init__(self.named(name))

    def named(self, name: str) -> str:
        """The message with the value called ``name``."""
        return self.template.replace("{name}", name)
