"""SQL and read errors as ``ByzerError``s, located in the SQL text when DuckDB says where."""
from __future__ import annotations

import re

import duckdb

from byzer_magic.errors import ByzerError


class SqlError(ByzerError):
    """A SQL error; ``sql_line``/``sql_column`` (1-based) locate it in the SQL text, if known."""

    def __init__(self, message: str, sql_line: int | None = None, sql_column: int | None = None):
        super().__init__(message)
        self.sql_line, self.sql_column = sql_line, sql_column


def sql_error(exc: duckdb.Error, sql: str | None = None) -> SqlError:
    """DuckDB's message in one line, located by its ``LINE n:`` marker when there is one."""
    text = str(exc)
    lines = [line for line in text.split("\n\nLINE ")[0].splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and re.match(r"(Did you mean|Candidate bindings)", lines[1]):
        message += " " + lines[1]
    line, column = caret(text, sql)
    return SqlError(message, line, column)


def caret(text: str, sql: str | None) -> tuple[int | None, int | None]:
    """The (line, column) that DuckDB's ``LINE n: ...`` and ``^`` point at in ``sql``."""
    match = re.search(r"^LINE (\d+): (.*)\n( *)\^", text, re.M)
    if not match:
        return None, None
    line = int(match.group(1))
    shown, at = match.group(2), len(match.group(3)) - len(f"LINE {line}: ")
    if not shown.startswith("...") or sql is None:
        return line, at + 1
    sql_lines = sql.split("\n")
    actual = sql_lines[line - 1] if line <= len(sql_lines) else ""
    core = shown[3:].removesuffix("...")
    start = actual.find(core)
    return line, (start + at - 3 + 1) if start >= 0 else None


def data_error(exc: BaseException, sql: str | None = None) -> ByzerError | None:
    """A ByzerError for a failure while rows flowed (a bad cast, an unreadable file), else None."""
    seen = set()
    # Ray Data keeps a UDF's exception only as text in its traceback: find DuckDB's line there.
    text = str(exc)
    match = re.search(r"^_?duckdb\.\w+: ", text, re.M)
    if match:
        rest = text[match.end():]
        message = re.split(r"\n\n(?:LINE \d+:|The above exception)", rest)[0]
        message = " ".join(message.split())
        if len(message) > 200:  # a cast error quotes the whole value
            message = f"{message[:120]} ... {message[-70:]}"
        return SqlError(message, *caret(rest, sql))
    match = re.search(r"^(?:pyarrow\.lib\.)?(Arrow\w+|OSError|UnicodeDecodeError): (.*)$", text, re.M)
    if match:  # a reader's error (a malformed JSON line, a csv row with too many columns)
        return ByzerError(f"while reading the table: {match.group(1)}: {match.group(2)[:300]}")
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, duckdb.Error):
            return sql_error(exc, sql)
        if isinstance(exc, (OSError, UnicodeError, ValueError)) and type(exc).__module__.startswith(
                ("pyarrow", "builtins")):
            first = (str(exc).splitlines() or [""])[0]
            return ByzerError(f"while reading the table: {type(exc).__name__}: {first}")
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None
