"""User errors: one clear message naming the statement, line and column, never a traceback wall."""
from __future__ import annotations

import difflib
from typing import Iterable


class ByzerError(Exception):
    """An error in what the user wrote or asked for.

    ``line``/``column`` are 1-based positions in the cell; ``source_line`` is that line's text, used to
    draw a caret under the spot. The magic turns this into an IPython ``UsageError`` (no traceback).
    """

    def __init__(self, message: str, *, statement: str | None = None, line: int | None = None,
                 column: int | None = None, source_line: str | None = None):
        super().__init__(message)
        self.message = message
        self.statement = statement
        self.line = line
        self.column = column
        self.source_line = source_line

    def located(self, *, statement: str | None = None, line: int | None = None, column: int | None = None,
                source_line: str | None = None) -> "ByzerError":
        """Fill in a position that the raiser did not know (keeps what it did know)."""
        self.statement = self.statement or statement
        if self.line is None:
            self.line, self.column, self.source_line = line, column, source_line
        return self

    def __str__(self) -> str:
        where = []
        if self.statement:
            where.append(f"in `{self.statement}`")
        if self.line is not None:
            where.append(f"line {self.line}" + (f", column {self.column}" if self.column else ""))
        head = (" ".join(where) + ": " if where else "") + self.message
        if self.source_line is not None and self.column:
            return f"{head}\n    {self.source_line}\n    {' ' * (self.column - 1)}^"
        return head


def did_you_mean(word: str, valid: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest valid name, or '' when none is close."""
    valid = list(valid)
    lowered = {v.lower(): v for v in valid}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f' (did you mean "{lowered[match[0]]}"?)' if match else ""
