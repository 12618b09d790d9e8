"""Parse a ``%%byzerllm`` cell into statements (see ``grammar.lark`` and docs/LANGUAGE.md).

``parse_cell(text)`` returns the statements of ``statements.py``; a syntax error is a ``ByzerError``
with the statement, line, column and a plain-words message.

Choices:

- ``;`` ends a statement. The last statement of a cell may leave it out (``select ... as t`` alone in a
  cell is a whole statement); anywhere else a missing ``;`` is the error "expected ';' to end the
  statement", with the caret where the ``;`` belongs. Empty statements (``;;``) are skipped.
- Strings: ``"..."`` and ``'...'`` end on their own line and know the escapes ``\\n \\t \\r \\\\ \\"
  \\' \\` \\uXXXX``; any other backslash is kept as written (``\\d``, ``C:\\data``, and ``\\${``, which
  interpolation.py reads as a literal ``${``). ``'''...'''`` is verbatim and may span lines.
- ``${name}`` is not substituted here: values are kept raw, ``interpolation.interpolate`` runs when
  the statement does (so that a ``set`` earlier in the same cell is seen).
- The SQL of a ``select`` is lexed as its dialect does (``sql_dialect``): Spark's (the default, as
  Byzer users write it: ``'...'`` and ``"..."`` are strings with backslash escapes) or DuckDB's
  (``'it''s'``, ``"quoted name"``); ``--`` and ``/* */`` comments and parentheses in both. Its alias is
  the last top-level ``as NAME``.
- A select's ``sql`` ends at its last token before the alias (a comment just before ``as NAME`` is
  left out). Inside a select, a line that starts with ``load``, ``run``, ``set``, ``!byzerllm``, or
  ``select`` not after ``union``/``intersect``/``except``, is taken for a forgotten ``;``.
- Keywords are case-insensitive; elsewhere they are ordinary names (``where as="1"``, ``as loader``).
- ``where`` may also be written ``options`` (as in Byzer), and may be followed directly by ``and``
  (``where\nand k="v"``, as Byzer's grammar allows). ``set x=... where type="..."`` keeps its options
  (``session.py`` runs them). An option given twice is an error.
- Control characters other than tab, newline and carriage return are refused (a pasted NUL or escape
  byte would otherwise end up in a path or a SQL string, unseen).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput
from lark.lexer import PatternRE

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.language.syntax_errors import Context as _Context
from byzer_magic.language.syntax_errors import syntax_error as _syntax_error
from byzer_magic.language.statements import (LoadStatement, Option, RunStatement, SelectStatement,
                                             SetStatement, SetupStatement, Span, Statement)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # all but tab, newline, CR


SQL_DIALECTS = ("spark", "duckdb")
# Spark's quoting (what the grammar's DuckDB terminals become in the Spark dialect): both quotes make
# strings, and a backslash escapes the next character.
_SPARK_SQL_TERMINALS = {"SQL_STRING": r"'(?:[^'\\]|\\[\s\S])*'", "SQL_QUOTED_NAME": r'"(?:[^"\\]|\\[\s\S])*"'}


@functools.cache
def _lark(sql_dialect: str = "spark") -> Lark:
    grammar = Path(__file__).with_name("grammar.lark").read_text(encoding="utf-8")

    def edit(terminal) -> None:
        if sql_dialect == "spark" and terminal.name in _SPARK_SQL_TERMINALS:
            terminal.pattern = PatternRE(_SPARK_SQL_TERMINALS[terminal.name])

    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True, edit_terminals=edit)


MAX_CELL_NESTING = 256  # (, [ and { open at once in a cell, outside strings


def parse_cell(text: str, sql_dialect: str = "spark") -> list[Statement]:
    """The statements of a cell, in order; ``[]`` for an empty cell or one of only comments.
    ``sql_dialect`` (``"spark"`` or ``"duckdb"``) decides how a select's strings are lexed."""
    if sql_dialect not in SQL_DIALECTS:
        raise ByzerError(f'unknown SQL dialect "{sql_dialect}"{did_you_mean(sql_dialect, SQL_DIALECTS)}; '
                         f"dialects: {', '.join(SQL_DIALECTS)}")
    cell = _Cell(text)
    cell.check_characters()
    cell.check_nesting()
    tree = _parse_tree(cell, sql_dialect)
    return [_build(cell, child) for child in tree.children if isinstance(child, Tree)]


class _Cell:
    """The cell's text, and positions in it for messages."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.split("\n")

    def line_text(self, line: int) -> str:
        text = self.lines[line - 1].rstrip("\r") if 0 < line <= len(self.lines) else ""
        return _CONTROL.sub(lambda m: chr(0x2400 + ord(m.group())) if m.group() < " " else "\ufffd", text)

    def span(self, line: int, column: int) -> Span:
        return Span(line, column, self.line_text(line))

    def check_nesting(self, limit: int = MAX_CELL_NESTING) -> None:
        """Brackets nested deeper than ``limit`` outside strings are refused before the grammar sees them:
        parsing them costs time that grows with the square of the depth (100,000 would hold the kernel for
        minutes). Strings are checked where they are used (a JSON value: runtime/config.py)."""
        depth, quote, i, text = 0, None, 0, self.text
        while i < len(text):
            if quote:
                if text.startswith(quote, i):
                    i, quote = i + len(quote), None
                    continue
                i += 2 if text[i] == "\\" and quote != "'''" else 1
                continue
            ch = text[i]
            if text.startswith("'''", i) or ch in "'\"`":
                quote = "'''" if text.startswith("'''", i) else ch
                i += len(quote)
                continue
            depth += (ch in "([{") - (ch in ")]}")
            if depth > limit:
                line = text.count("\n", 0, i) + 1
                column = i - (text.rfind("\n", 0, i) + 1) + 1
                raise ByzerError(f"brackets nest more than {limit} deep", line=line, column=column,
                                 source_line=self.line_text(line))
            i += 1

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        line = self.text.count("\n", 0, offset) + 1
        return line, offset - (self.text.rfind("\n", 0, offset) + 1) + 1

    def error(self, message: str, statement: str | None, line: int, column: int) -> ByzerError:
        return ByzerError(message, statement=statement, line=line, column=column,
                          source_line=self.line_text(line))

    def after(self, token: Token) -> tuple[int, int]:
        """The position just after a token (where a missing ';' belongs)."""
        return token.end_line, token.end_column

    def check_characters(self) -> None:
        for match in _CONTROL.finditer(self.text):
            line, column = self.position(match.start())
            raise self.error(f"control character U+{ord(match.group()):04X} is not allowed", None, line, column)


# ---------------------------------------------------------------------------------------------------
# Running the parser, and turning lark's errors into messages a user can act on.

def _parse_tree(cell: _Cell, sql_dialect: str) -> Tree:
    parser = _lark(sql_dialect).parse_interactive(cell.text)
    context = _Context()
    # The state before the next token, kept because LALR reduces on merged look-aheads: a token that
    # fails can leave the parser with fewer choices than the user really had at that point.
    before = parser.parser_state.copy(deepcopy_values=False)
    try:
        for token in parser.lexer_thread.lex(parser.parser_state):  # InteractiveParser.iter_parse
            parser.feed_token(token)
            context.saw(token)
            before = parser.parser_state.copy(deepcopy_values=False)
        return parser.feed_eof(context.previous)
    except UnexpectedInput as exc:
        parser.parser_state = before
        raise _syntax_error(cell, context, parser, exc) from None


def _build(cell: _Cell, tree: Tree) -> Statement:
    first = tree.children[0]  # the statement's keyword
    span = cell.span(first.line, first.column)
    text = cell.text[tree.meta.start_pos:tree.meta.end_pos]
    builder = {"load": _build_load, "select": _build_select, "run": _build_run, "set": _build_set,
               "setup": _build_setup}[tree.data]
    return builder(cell, tree, span, text)


def _build_load(cell, tree, span, text):
    _, fmt, _, path, *rest = tree.children
    return LoadStatement(span=span, text=text, format=str(fmt), path=str(path)[1:-1],
                         options=_options(cell, rest, "load"), alias=str(rest[-1]))


def _build_run(cell, tree, span, text):
    _, source, _, transform, *rest = tree.children
    path = ""
    if rest and isinstance(rest[0], Token) and rest[0].type == "DOT":
        path, rest = str(rest[1])[1:-1], rest[2:]
    alias = str(rest[-1]) if rest and isinstance(rest[-1], Token) else None
    source = str(source)[1:-1] if source.type == "BQ" else str(source)
    return RunStatement(span=span, text=text, input=source, transform=str(transform), path=path,
                        options=_options(cell, rest, "run"), alias=alias)


def _build_set(cell, tree, span, text):
    _, name, _, value, *rest = tree.children
    token = value.children[0].children[0] if isinstance(value.children[0], Tree) else value.children[0]
    quote = 3 if token.type == "TRIPLE_STRING" else 1 if token.type in ("DQ_STRING", "SQ_STRING") else 0
    value_span = cell.span(token.line, token.column + quote)
    raw = str(token)[quote:len(token) - quote]
    return SetStatement(span=span, text=text, name=str(name), value=_value(value),
                        options=_options(cell, rest, "set"), value_span=value_span, value_raw=raw)


def _build_setup(cell, tree, span, text):
    value = tree.children[2]
    if isinstance(value, Tree):
        return SetupStatement(span=span, text=text, value=_unquote(value.children[0]), quoted=True)
    return SetupStatement(span=span, text=text, value=str(value), quoted=False)


def _build_select(cell, tree, span, text):
    items = tree.children[1:]
    _check_select_continues(cell, items)
    if items and str(items[-1]) == "；":
        raise cell.error("found a full-width '；': write ';' to end the statement", "select",
                         items[-1].line, items[-1].column)
    if len(items) < 3 or not _is_word(items[-2], "as") or not _is_token(items[-1], "SQL_WORD"):
        end = items[-1] if items else tree.children[0]
        line, column = (end.end_line, end.end_column) if isinstance(end, Token) else (
            end.meta.end_line, end.meta.end_column)
        raise cell.error('expected "as NAME" at the end of the select, to name its result table',
                         "select", line, column)
    last = items[-3]
    end_pos = last.end_pos if isinstance(last, Token) else last.meta.end_pos
    sql = cell.text[tree.children[0].start_pos:end_pos]
    return SelectStatement(span=span, text=text, sql=sql, alias=str(items[-1]), sql_span=span)


_SET_OPERATORS = {"union", "all", "distinct", "intersect", "except", "by", "as"}


def _check_select_continues(cell: _Cell, items) -> None:
    """A statement keyword that starts a line inside a select most likely follows a forgotten ';'."""
    for previous, item in zip(items, items[1:]):
        if not isinstance(item, Token) or item.line == _end_line(previous):
            continue
        word = str(item).lower()
        if word == "select":  # a new statement, unless the query goes on (union ... select)
            starts = _is_token(previous, "SQL_WORD") and str(previous).lower() not in _SET_OPERATORS
        else:
            bang = cell.text[item.start_pos:item.start_pos + len("!byzerllm")].lower() == "!byzerllm"
            starts = word in ("load", "run", "set") or bang
        if starts:
            found = "!byzerllm" if word == "!" else str(item)
            raise cell.error(f'expected \';\' to end the statement (found "{found}" on line {item.line})',
                             "select", _end_line(previous), _end_column(previous))


def _end_line(item) -> int:
    return item.end_line if isinstance(item, Token) else item.meta.end_line


def _end_column(item) -> int:
    return item.end_column if isinstance(item, Token) else item.meta.end_column


def _is_token(item, kind: str) -> bool:
    return isinstance(item, Token) and item.type == kind


def _is_word(item, word: str) -> bool:
    return _is_token(item, "SQL_WORD") and str(item).lower() == word


def _options(cell: _Cell, rest, statement: str) -> tuple[Option, ...]:
    where = next((c for c in rest if isinstance(c, Tree) and c.data == "where_clause"), None)
    if where is None:
        return ()
    options: list[Option] = []
    seen: set[str] = set()
    for option in (c for c in where.children if isinstance(c, Tree)):
        key_token, _, value = option.children
        key = str(key_token)[1:-1] if key_token.type == "BQ" else str(key_token)
        if key in seen:
            raise cell.error(f'option "{key}" is given twice', statement, key_token.line, key_token.column)
        seen.add(key)
        options.append(Option(key=key, value=_value(value), span=cell.span(key_token.line, key_token.column)))
    return tuple(options)


def _value(value: Tree) -> str:
    inner = value.children[0]
    if isinstance(inner, Tree):  # string
        return _unquote(inner.children[0])
    return str(inner)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "`": "`"}


def _unquote(token: Token) -> str:
    if token.type == "TRIPLE_STRING":
        return str(token)[3:-3]
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", _unescape, str(token)[1:-1])


def _unescape(match: re.Match) -> str:
    code = match.group(1)
    if len(code) == 5:
        return chr(int(code[1:], 16))
    return _ESCAPES.get(code, match.group())


def raw_offset(raw: str, index: int) -> int:
    """Where character ``index`` of a "..."/'...' string's value stands in its text as written
    (``raw``, escapes unread)."""
    written = produced = 0
    for match in re.finditer(r"\\(u[0-9a-fA-F]{4}|.)", raw):
        plain = match.start() - written
        if produced + plain > index:
            break
        produced, written = produced + plain, match.start()
        length = len(_unescape(match))
        if produced + length > index:  # inside this escape (kept as written when it is not one)
            return written + (index - produced if length == len(match.group()) else 0)
        produced, written = produced + length, match.end()
    return written + (index - produced)
