"""One error type for bad input, so the CLI can print one line and exit non-zero.

Every message names where the problem is (file, line, field) because users of this toolkit
feed it multi-gigabyte logs: "bad value" without a location is useless to them.
"""
from __future__ import annotations


class BehaviorLMError(Exception):
    """Base class for errors the CLI reports as one line (no traceback)."""


class DataError(BehaviorLMError):
    """Bad input data: missing file, malformed row, wrong column mapping, empty log, ...

    ``str(err)`` is ``"<path>:<line>: field '<field>': <message>"`` with the parts that are known.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        fld = f"field '{self.field}': " if self.field else ""
        return f"{where}{fld}{self.message}"


class RecipeError(BehaviorLMError):
    """A recipe (YAML) or command-line flag is wrong: unknown key, bad value, missing file."""
