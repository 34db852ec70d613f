"""User-facing errors: one line that names the file/column/value and what was expected."""

from __future__ import annotations


class SocmapError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""


class InputError(SocmapError):
    """Bad or missing input data (file, column, value)."""


class OutputError(SocmapError):
    """The output location cannot be written, or exists and --overwrite was not given."""
