"""Commands of this group are registered on the shared app when this module is imported."""

from realignkit.cli.app import app  # noqa: F401
