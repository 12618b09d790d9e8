"""Spark SQL, as Byzer users write it, turned into DuckDB's SQL by sqlglot (``read="spark"``).

What changes: ``"..."`` is a string (not a quoted name), ``\\n``/``\\t``/``\\'`` escapes in strings are
characters, back-quoted names are names, and Spark's functions become DuckDB's where sqlglot maps them
(``concat`` -> ``||``, ``get_json_object`` -> ``->>``, ``explode(split(..))`` -> ``unnest(str_split_regex
(..))``, ``posexplode`` -> ``generate_subscripts`` + ``unnest``, ``nvl``, ``instr``, ``size``,
``date_format``, ...). A few Spark functions that neither sqlglot
nor DuckDB has are DuckDB macros here (``SPARK_MACROS``). ``cast`` follows Spark 3 (what Byzer ran): a
value that does not convert becomes NULL.

Positions: sqlglot's own errors carry the user's line and column; DuckDB's errors point into the
generated SQL, and ``Translation.position`` maps them back by aligning the two texts' tokens.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, ParseError, TokenError, UnsupportedError

from byzer_magic.runtime.tables.errors import SqlError

DIALECTS = ("spark", "duckdb")

# Spark functions that DuckDB lacks and sqlglot passes through unchanged.
SPARK_MACROS = (
    """create or replace macro substring_index(s, delim, n) as
         case when n > 0 then array_to_string(string_split(s, delim)[1:n], delim)
              when n < 0 then array_to_string(string_split(s, delim)[n:], delim)
              when s is null then null else '' end""",
    "create or replace macro \"isnull\"(x) as x is null",  # a keyword in DuckDB: quoted
    "create or replace macro isnotnull(x) as x is not null",
    "create or replace macro find_in_set(s, list) as coalesce(list_position(string_split(list, ','), s), 0)",
)


@dataclass(frozen=True)
class Translation:
    """The SQL DuckDB runs for what the user wrote, and how to map positions back."""
    source: str
    sql: str
    dialect: str
    _pairs: list[tuple[int, int, int, int]] = field(default_factory=list, repr=False)  # out/src spans

    def offset(self, out_offset: int) -> int:
        """The offset in ``source`` of ``out_offset`` in ``sql``."""
        if self.sql == self.source or not self._pairs:
            return out_offset
        for out_start, out_end, src_start, src_end in self._pairs:
            if out_offset <= out_end:
                if out_offset < out_start:
                    return src_start
                return min(src_start + (out_offset - out_start), src_end)
        return self._pairs[-1][2]

    def position(self, line: int | None, column: int | None) -> tuple[int | None, int | None]:
        """``(line, column)`` in ``sql`` (1-based) -> the same place in ``source``."""
        if line is None or self.sql == self.source:
            return line, column
        lines = self.sql.split("\n")
        out = sum(len(text) + 1 for text in lines[:line - 1]) + (column or 1) - 1
        src = self.offset(out)
        src_line = self.source.count("\n", 0, src) + 1
        src_column = src - (self.source.rfind("\n", 0, src) + 1) + 1
        return src_line, (src_column if column else None)


def translate(sql: str, dialect: str = "spark") -> Translation:
    """``sql`` as DuckDB's SQL; sqlglot's errors become located ``SqlError``s."""
    if dialect == "duckdb":
        return Translation(sql, sql, dialect)
    try:
        trees = [tree for tree in sqlglot.parse(sql, read="spark") if tree is not None]
    except ParseError as exc:
        raise _parse_error(exc) from None
    except TokenError as exc:
        raise SqlError(f"Parser Error: {exc}") from None
    if len(trees) != 1:
        raise SqlError("expected one query")
    _check_generator_aliases(trees[0])
    try:
        out = trees[0].sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as exc:
        raise SqlError(f"{str(exc).strip()} (Spark SQL is run by DuckDB; write the query with DuckDB's "
                       f"functions, or %config ByzerMagic.sql_dialect = \"duckdb\")") from None
    return Translation(sql, out, dialect, _align(sql, out))


def _check_generator_aliases(tree) -> None:
    """Spark's rule for ``posexplode``: it makes two columns, so one alias is an error (sqlglot would
    write SQL that DuckDB rejects at a place the user did not write)."""
    for alias in tree.find_all(exp.Alias):
        if isinstance(alias.this, exp.Posexplode):
            name = next(e for e in alias.iter_expressions() if isinstance(e, exp.Identifier))  # the alias
            raise SqlError(f"posexplode makes two columns, the position and the value: write "
                           f"`as (pos, {name.name})`, or name none to get `pos` and `col`",
                           name.meta.get("line"), name.meta.get("col", 0) - len(name.name) + 1 or None)


def install_macros(con, dialect: str) -> None:
    """The Spark functions of ``SPARK_MACROS`` in a DuckDB connection (Spark dialect only)."""
    if dialect == "spark":
        for macro in SPARK_MACROS:
            con.execute(macro)


def _parse_error(exc: ParseError) -> SqlError:
    error = (exc.errors or [{}])[0]
    description = str(error.get("description") or str(exc).split(". Line")[0])
    highlight = str(error.get("highlight") or "")
    line, column = error.get("line"), error.get("col")
    if column and highlight and "\n" not in highlight:
        column = column - len(highlight) + 1  # sqlglot's column is the token's last character
    near = f' at or near "{highlight}"' if highlight else ""
    if description.startswith(("Invalid expression", "Unexpected token")) or not description:
        message = f"Parser Error: syntax error{near}"
    else:
        description = re.sub(r"^Expecting (\S+)$", r"expected '\1'", description)
        message = f"Parser Error: syntax error{near}: {description}"
    return SqlError(message, line, column)


def _tokens(text: str, dialect: str) -> list:
    try:
        return Dialect.get_or_raise(dialect).tokenize(text)
    except TokenError:
        return []


def _align(source: str, out: str) -> list[tuple[int, int, int, int]]:
    """(out_start, out_end, src_start, src_end) for each output token, matched to a source token."""
    src, dst = _tokens(source, "spark"), _tokens(out, "duckdb")
    if not src or not dst:
        return []
    matcher = difflib.SequenceMatcher(None, [t.text.lower() for t in src], [t.text.lower() for t in dst],
                                      autojunk=False)
    pairs = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            i = i1 + (j - j1) if tag == "equal" else min(i1, len(src) - 1)
            pairs.append((dst[j].start, dst[j].end, src[i].start, src[i].end))
    return pairs
