"""What a syntax error says: where in the cell, in which statement, what was found and what is valid
there (with a "did you mean"). ``parser.py`` feeds the parser token by token through a ``Context`` and
turns lark's ``UnexpectedInput`` into one located ``ByzerError`` here."""
from __future__ import annotations

import re

from lark import Token
from lark.exceptions import UnexpectedInput

from byzer_magic.errors import ByzerError, did_you_mean

STATEMENTS = ("load", "select", "run", "set", "!byzerllm setup")
_KEYWORD_STATEMENT = {"LOAD": "load", "SELECT": "select", "RUN": "run", "SET": "set",
                      "BYZERLLM": "!byzerllm setup"}


class Context:
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


def syntax_error(cell, context: Context, parser, exc: UnexpectedInput) -> ByzerError:
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


def _unterminated(cell, rest: str, name: str | None, line: int, column: int) -> ByzerError:
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


def _describe_expected(expected: set[str], context: Context) -> str:
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

