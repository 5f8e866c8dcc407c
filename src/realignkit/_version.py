"""The version, declared once: the package exports it and packaging reads it from here."""

__version__ = "0.1.0"
