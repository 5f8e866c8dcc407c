"""The one exception type users see.

Everything that is the user's fault (a wrong path, mismatched shapes, NaN in a checkpoint,
a bad option value) raises :class:`RealignError` with a one-line message that names the file
or tensor. The CLI prints the message and exits with code 2 instead of a traceback.
"""

from __future__ import annotations


class RealignError(Exception):
    """A user-facing error: the message is one line and says what to fix."""
