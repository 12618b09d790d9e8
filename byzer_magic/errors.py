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


class DeterministicFailure(ByzerError):
    """A failure that would happen again the same way if the job were restarted (a full disk, a loss
    that is not finite, a tokenizer that does not fit the model): the driver fails the job at once
    instead of letting Ray Train retry it (``TrainingSection.max_failures`` counts lost workers only)."""


class CheckpointWriteError(DeterministicFailure):
    """A checkpoint could not be written (disk full, permissions, I/O error); the previous one is intact."""


# Bounds on what a cell may ask for: each count is checked before anything is built from it.
MAX_NESTING = 64            # brackets inside a JSON value (deepspeedConfig, modelConfig)
MAX_PARTITIONS = 1_000_000  # TableRepartition partitionNum


def check_count(name: str, value: int, *, high: int, low: int = 1) -> int:
    """``value`` if ``low <= value <= high``, else a ``ByzerError`` naming ``name`` and the bound.

    For counts the user writes (``partitionNum``, ...): a count past the bound would hold the kernel
    while it tries to build that many things."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ByzerError(f"{name} must be a whole number from {low:,} to {high:,}, got {value!r}")
    return value


def check_nesting(text: str, *, what: str, limit: int = MAX_NESTING) -> None:
    """A ``ByzerError`` if the brackets ``[{(`` in ``text`` nest deeper than ``limit`` (outside of
    double-quoted strings): a bounded check before a recursive parser (``json.loads``) sees it."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{(":
            depth += 1
            if depth > limit:
                raise ByzerError(f"{what} nests brackets more than {limit} deep (at character {i + 1})")
        elif ch in "]})":
            depth -= 1


_INVISIBLE = {0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0}


def unsafe_characters(text: str) -> list[tuple[int, str]]:
    """``[(index, "U+XXXX")]`` of the characters a reader cannot see or that reorder the text on screen:
    bidirectional controls (U+202A-202E, U+2066-2069, U+200E/F, U+061C), zero-width and other format
    characters (Unicode category Cf), control characters, and the invisible fillers above."""
    import unicodedata  # noqa: PLC0415

    found = []
    for i, ch in enumerate(text):
        code = ord(ch)
        if code in _INVISIBLE or (unicodedata.category(ch) in ("Cf", "Cc", "Zl", "Zp") and ch not in "\t\n\r"):
            found.append((i, f"U+{code:04X}"))
    return found


def check_visible(text: str, *, what: str) -> str:
    """``text`` unchanged, or a ``ByzerError`` that shows it escaped (``ascii``) and names the first
    invisible or bidirectional-control character: a name or path must read as what it is."""
    bad = unsafe_characters(text)
    if bad:
        index, code = bad[0]
        raise ByzerError(f"{what} holds an invisible or text-reordering character {code} at character "
                         f"{index + 1}: {ascii(text)}; retype it")
    return text
