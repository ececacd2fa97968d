"""User-facing errors. The command line prints their message (no traceback) and exits with status 2."""

from __future__ import annotations


class MrhpError(Exception):
    """An error caused by the user's input or settings, with a message that says what to fix."""


class DataError(MrhpError):
    """Bad input data; the message names the file, and where known the line (1-based) or record and field."""

    def __init__(self, message: str, *, file: object = None, line: int | None = None, field: str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
        self.file = file
        self.line = line
        self.field = field
