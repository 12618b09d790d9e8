"""Parse a ``%%byzerllm`` cell into statements (see ``grammar.lark`` and spec section 2).

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
from byzer_magic.language.statements import (LoadStatement, Option, RunStatement, SelectStatement,
                                             SetStatement, SetupStatement, Span, Statement)

STATEMENTS = ("load", "select", "run", "set", "!byzerllm setup")
_KEYWORD_STATEMENT = {"LOAD": "load", "SELECT": "select", "RUN": "run", "SET": "set",
                      "BYZERLLM": "!byzerllm setup"}
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


MAX_CELL_NESTING = 256  # (, [ and { open at once anywhere in a cell, strings included


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
        """Brackets nested deeper than ``limit`` are refused before the grammar sees them: parsing them
        costs time that grows with the square of the depth (100,000 would hold the kernel for minutes)."""
        depth = 0
        for line_no, line in enumerate(self.lines, 1):
            for column, ch in enumerate(line, 1):
                depth += (ch in "([{") - (ch in ")]}")
                if depth > limit:
                    raise ByzerError(f"brackets nest more than {limit} deep", line=line_no, column=column,
                                     source_line=self.line_text(line_no))

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


class _Context:
    """What the parser has seen so far: the current statement's first token, the last token, open '('."""

    def __init__(self):
        self.statement: Token | None = None
        self.previous: Token | None = None
        self.before_previous: Token | None = None
        self.open_parens: list[Token] = []
        self.as_count = 0  # `as` seen in this statement: a run's first `as` names its transform

    def saw(self, token: Token) -> None:
        if token.type == "SEMI":
            self.statement, self.as_count = None, 0
        elif self.statement is None:
            self.statement = token
        self.as_count += token.type == "AS"
        if token.type == "LPAR":
            self.open_parens.append(token)
        elif token.type == "RPAR" and self.open_parens:
            self.open_parens.pop()
        self.before_previous, self.previous = self.previous, token

    @property
    def name(self) -> str | None:
        return _KEYWORD_STATEMENT.get(self.statement.type) if self.statement else None


def _syntax_error(cell: _Cell, context: _Context, parser, exc: UnexpectedInput) -> ByzerError:
    expected = parser.accepts()
    token = getattr(exc, "token", None)
    at_end = token is not None and token.type == "$END"
    offset = len(cell.text) if at_end else (token.start_pos if token is not None else exc.pos_in_stream)
    line, column = cell.position(offset)
    rest = cell.text[offset:]
    name = context.name

    if name is None and not at_end:
        word = re.match(r"!?\w+|\S", rest).group()
        if word.lower() == "!byzerllm":
            return cell.error('expected "setup" after !byzerllm', word, line, column + len(word) + 1)
        hint = did_you_mean(word, STATEMENTS) or did_you_mean(word.lstrip("!"), STATEMENTS)
        return cell.error(f'unknown statement "{word}"{hint}; statements are: {", ".join(STATEMENTS)}',
                          word, line, column)

    if not at_end and rest[:1] in "'\"`" and _opens_string(rest[:1], expected):
        return _unterminated(cell, rest, name, line, column)

    if context.open_parens and (at_end or rest[:1] == ";"):
        paren = context.open_parens[-1]
        where = (line, column) if not at_end else cell.after(context.previous)
        return cell.error(f"expected ')' to close the '(' at line {paren.line}, column {paren.column}",
                          name, *where)
    if rest[:1] == ")" and "SQL_WORD" in expected:
        return cell.error("')' without a matching '('", name, line, column)

    keyword = context.previous
    if keyword is not None and keyword.type in ("OPTION_KEY", "NAME") and "SEMI" not in expected and \
            keyword.lower() in ("as", "and", "where", "options"):
        # `where as t`, `run as LLM`: a keyword was taken for a name, which then did not fit.
        what = 'an option such as key="value"' if keyword.type == "OPTION_KEY" else \
            _name_word(context.name, context.before_previous, context.as_count)
        return cell.error(f'expected {what}, found "{keyword}"', name, keyword.line, keyword.column)

    found = _describe_found(rest, at_end)
    if "AND" in expected and re.match(r",|(`[^`\n]*`|\w+(\.\w+)*)\s*=", rest):
        return cell.error(f'expected "and" between options, found {found}', name, line, column)
    if "SEMI" in expected:
        end_line, end_column = cell.after(context.previous)
        if not at_end:
            found += f" on line {line}" if line != end_line else ""
        return cell.error("expected ';' to end the statement" + ("" if at_end else f" (found {found})"),
                          name, end_line, end_column)
    if at_end:
        line, column = cell.after(context.previous)
    return cell.error(f"expected {_describe_expected(expected, context)}, found {found}", name, line, column)


def _opens_string(quote: str, expected: set[str]) -> bool:
    kinds = {"'": {"SQ_STRING", "TRIPLE_STRING", "SQL_STRING"}, '"': {"DQ_STRING", "SQL_QUOTED_NAME"},
             "`": {"BQ", "SQL_BQ"}}[quote]
    return bool(kinds & expected)


def _unterminated(cell: _Cell, rest: str, name: str | None, line: int, column: int) -> ByzerError:
    opened = f"opened at line {line}, column {column}"
    what = "'''...''' string" if rest.startswith("'''") else "back-quoted name" if rest[0] == "`" else "string"
    if name == "select" or rest.startswith("'''"):  # these may span lines: they run to the cell's end
        end_line, end_column = cell.position(len(cell.text))
    else:
        end_line, end_column = line, len(cell.lines[line - 1].rstrip("\r")) + 1
        if what == "string" and rest[0] in rest[1:]:
            opened += "; only '''...''' strings may span lines"
    return cell.error(f"unterminated {what} ({opened})", name, end_line, end_column)


def _describe_found(rest: str, at_end: bool) -> str:
    if at_end:
        return "the end of the cell"
    if rest[0] == "；":
        return "a full-width '；'"
    if rest[0] in "'\"":
        return "a string"
    word = re.match(r"`[^`\n]*`|[!\w]+|\S", rest).group()
    return f"'{word}'" if len(word) == 1 else f'"{word[:30]}"'


def _describe_expected(expected: set[str], context: _Context) -> str:
    """The terminals the parser could take, in words, in the order they are written."""
    if "SETUP_WORD" in expected:
        return 'a setting such as sfft or "num_gpus=24"'
    if context.previous is not None and context.previous.type == "RUN":
        return "a table name (or command)"
    in_run = context.name == "run"
    if "OPTION_KEY" in expected:  # a back-quote starts a key such as `sfft.int.max_length`; a leading
        expected = expected - {"BQ", "AND"}  # `and` (Byzer allows `where and k=v`) is not worth a mention
    phrases = {
        "SETUP": '"setup"', "EQ": "'='", "RPAR": "')'",
        "DOT": "'.' and a back-quoted path, as in text.`/data/*.txt`",
        "BQ": "a back-quoted path such as `/data/*.txt`" + (" (`` for none)" if in_run else ""),
        "OPTION_KEY": 'an option such as key="value"',
        "DQ_STRING": """a value ("...", '...', '''...''' or a bare word)""",
        "NAME": _name_word(context.name, context.previous, context.as_count),
        "AND": '"and key=value"',
        "WHERE": '"where key=value"',
        "AS": '"as" and a transform such as LLM.``' if in_run and not context.as_count
              else '"as NAME" to name the table',
    }
    words = [phrase for terminal, phrase in phrases.items() if terminal in expected]
    return " or ".join(words) if words else "';'"


def _name_word(statement: str | None, after: Token | None, as_count: int) -> str:
    """What a name stands for, by the token before it."""
    previous = after.type if after is not None else None
    if previous == "RUN":
        return "a table name (or command)"
    if previous == "LOAD":
        return "a format such as text.`/path`"
    if previous == "SET":
        return "a variable name"
    if previous == "AS" and statement == "run" and as_count == 1:
        return "a transform such as TableRepartition.`` or LLM.``"
    return "a table name"


# ---------------------------------------------------------------------------------------------------
# Building statements from the tree.

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
