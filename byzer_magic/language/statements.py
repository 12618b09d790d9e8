"""The statements of a ``%%byzerllm`` cell, as the parser produces them.

Every statement keeps its ``span`` (where it is in the cell) so that errors found later, while it
runs, can still name the line and column. String values are kept raw: ``${var}`` is substituted when
the statement runs (a ``set`` earlier in the same cell must be visible), by ``interpolation``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """1-based line/column of a statement or value in its cell, plus the text of that line."""
    line: int
    column: int
    source_line: str = ""


@dataclass(frozen=True)
class Option:
    """One ``key="value"`` of a ``where`` clause. ``key`` is unquoted (back-quotes removed)."""
    key: str
    value: str
    span: Span


@dataclass(frozen=True)
class Statement:
    span: Span
    text: str  # the statement's source text, without the trailing ';' (used in messages)

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Statement").lower()


@dataclass(frozen=True)
class LoadStatement(Statement):
    """``load FORMAT.`PATH` [where k="v" and ...] as ALIAS``"""
    format: str
    path: str
    options: tuple[Option, ...]
    alias: str


@dataclass(frozen=True)
class SelectStatement(Statement):
    """``select ... as ALIAS``: ``sql`` is the query text without the final ``as ALIAS``."""
    sql: str
    alias: str
    sql_span: Span = field(default=Span(1, 1))  # where ``sql`` starts in the cell, to map DuckDB errors


@dataclass(frozen=True)
class RunStatement(Statement):
    """``run INPUT as TRANSFORM.`PATH` [where ...] [as ALIAS]`` (TableRepartition, LLM, ...)."""
    input: str
    transform: str
    path: str
    options: tuple[Option, ...]
    alias: str | None


@dataclass(frozen=True)
class SetupStatement(Statement):
    """``!byzerllm setup sfft;`` (``value='sfft'``) or ``!byzerllm setup "num_gpus=24";``."""
    value: str
    quoted: bool


@dataclass(frozen=True)
class SetStatement(Statement):
    """``set NAME='''...''' [where type="sql" ...];``: ``value_span`` is where the value's text starts
    (after its quote), ``value_raw`` that text as written (escapes not yet read), to locate errors in it."""
    name: str
    value: str
    options: tuple[Option, ...] = ()
    value_span: Span | None = None
    value_raw: str = ""
