"""User-facing errors: one line that names the file/column/value and what was expected.

``InputError`` also subclasses :class:`ValueError`, so socmap's scikit-learn-style splitters and estimators
follow scikit-learn's convention (bad arguments raise ``ValueError``) while the CLI still prints them as one line.
"""

from __future__ import annotations

__all__ = ["InputError", "OutputError", "SocmapError"]


class SocmapError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""


class InputError(SocmapError, ValueError):
    """Bad or missing input data (file, column, value)."""


class OutputError(SocmapError):
    """The output location cannot be written, or exists and --overwrite was not given."""
