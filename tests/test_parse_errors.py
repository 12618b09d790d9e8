"""Bad cells: each gives one ByzerError naming the statement, line and column, in plain words."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzer_magic.errors import ByzerError
from byzer_magic.language.interpolation import interpolate
from byzer_magic.language.parser import parse_cell
from byzer_magic.language.statements import Span

STATEMENTS = "statements are: load, select, run, set, !byzerllm setup"
VALUE = """a value ("...", '...', '''...''' or a bare word)"""

# (cell, statement, line, column, message)
CASES = {
    # unterminated strings, each kind: the caret is where the string should have ended
    "double-quoted": ('set x="abc;\nset y=1;', "set", 1, 12, "unterminated string (opened at line 1, column 7)"),
    "single-quoted": ("set x='abc;", "set", 1, 12, "unterminated string (opened at line 1, column 7)"),
    "closed on a later line": ("set x='abc;\nset y='2';", "set", 1, 12,
                               "unterminated string (opened at line 1, column 7; only '''...''' strings may span lines)"),
    "triple-quoted": ("set x='''abc;\nset y=1;", "set", 2, 9,
                      "unterminated '''...''' string (opened at line 1, column 7)"),
    "triple-quoted option": ("run t as X.`` where a='''x\n;", "run", 2, 2,
                             "unterminated '''...''' string (opened at line 1, column 23)"),
    "back-quoted path": ("load text.`/data/x as t;", "load", 1, 25,
                         "unterminated back-quoted name (opened at line 1, column 11)"),
    "back-quoted key": ("run t as X.`` where `sfft.int.max_length=1;", "run", 1, 44,
                        "unterminated back-quoted name (opened at line 1, column 21)"),
    "setup value": ('!byzerllm setup "num_gpus=2;', "!byzerllm setup", 1, 29,
                    "unterminated string (opened at line 1, column 17)"),
    "SQL string": ("select 'abc from t as u;\n", "select", 2, 1, "unterminated string (opened at line 1, column 8)"),
    "SQL quoted name": ('select "abc from t as u;', "select", 1, 25, "unterminated string (opened at line 1, column 8)"),
    # a missing ';' between statements: the caret is where the ';' belongs
    "load then select": ("load text.`/x` as t\nselect * from t as u;", "load", 1, 20,
                         "expected ';' to end the statement (found \"select\" on line 2)"),
    "set then set": ("set a=1\nset b=2;", "set", 1, 8, "expected ';' to end the statement (found \"set\" on line 2)"),
    "run then setup": ('run t as TableRepartition.`` where partitionNum="2" as u\n!byzerllm setup sfft;', "run", 1, 57,
                       "expected ';' to end the statement (found \"!byzerllm\" on line 2)"),
    "select then load": ("select * from t as u\nload text.`/x` as v;", "select", 1, 21,
                         "expected ';' to end the statement (found \"load\" on line 2)"),
    "select then select": ("select * from t as u\nselect * from u as v;", "select", 1, 21,
                           "expected ';' to end the statement (found \"select\" on line 2)"),
    "select then setup": ("select 1 as u -- x\n!byzerllm setup sfft;", "select", 1, 14,
                          "expected ';' to end the statement (found \"!byzerllm\" on line 2)"),
    "more after the alias": ("load text.`/x` as t u;", "load", 1, 20, "expected ';' to end the statement (found 'u')"),
    "two set values": ("set x=1 2;", "set", 1, 8, "expected ';' to end the statement (found '2')"),
    "full-width semicolon": ("load text.`/x` as t；", "load", 1, 20,
                             "expected ';' to end the statement (found a full-width '；')"),
    "full-width after select": ("select 1 as t；", "select", 1, 14,
                                "found a full-width '；': write ';' to end the statement"),
    # unknown statements
    "lod": ("lod text.`/x` as t;", "lod", 1, 1, f'unknown statement "lod" (did you mean "load"?); {STATEMENTS}'),
    "selct": ("selct * from t as u;", "selct", 1, 1, f'unknown statement "selct" (did you mean "select"?); {STATEMENTS}'),
    "LAOD": ("LAOD text.`/x` as t;", "LAOD", 1, 1, f'unknown statement "LAOD" (did you mean "load"?); {STATEMENTS}'),
    "train": ("train t as X;", "train", 1, 1, f'unknown statement "train"; {STATEMENTS}'),
    "!byzerlm": ("!byzerlm setup sfft;", "!byzerlm", 1, 1,
                 f'unknown statement "!byzerlm" (did you mean "!byzerllm setup"?); {STATEMENTS}'),
    "after a statement": ("load text.`/x` as t;\n  fooo bar;", "fooo", 2, 3, f'unknown statement "fooo"; {STATEMENTS}'),
    "after ;;": ("set a=1;;lod x;", "lod", 1, 10, f'unknown statement "lod" (did you mean "load"?); {STATEMENTS}'),
    "with": ("with x as (select 1) select * from x as y;", "with", 1, 1, f'unknown statement "with"; {STATEMENTS}'),
    "!byzerllm stup": ("!byzerllm stup sfft;", "!byzerllm setup", 1, 11, 'expected "setup", found "stup"'),
    # garbled where clauses
    "and then as": ('load text.`/x` where wholetext="true" and as t;', "load", 1, 43,
                    'expected an option such as key="value", found "as"'),
    "empty where": ("load text.`/x` where as t;", "load", 1, 22, 'expected an option such as key="value", found "as"'),
    "and at the end": ('run t as X.`` where a="1" and;', "run", 1, 30,
                       'expected an option such as key="value", found \';\''),
    "and at the cell's end": ('run command as LLM.`` where a="x" and\n', "run", 1, 38,
                              'expected an option such as key="value", found the end of the cell'),
    "missing and": ('load text.`/x` where wholetext="true" format="x" as t;', "load", 1, 39,
                    'expected "and" between options, found "format"'),
    "missing and after a comment": ('run t as X.`` where a="1"\n-- comment\n  b="2";', "run", 3, 3,
                                    "expected \"and\" between options, found 'b'"),
    "comma": ('run t as X.`` where a="1", b="2";', "run", 1, 26, "expected \"and\" between options, found ','"),
    "or": ('load text.`/x` where wholetext="true" or x="1" as t;', "load", 1, 39,
           'expected "and key=value" or "as NAME" to name the table, found "or"'),
    "missing =": ('load text.`/x` where wholetext "true" as t;', "load", 1, 32, "expected '=', found a string"),
    "missing value": ("load text.`/x` where wholetext= as t;", "load", 1, 33, f'expected {VALUE}, found "as"'),
    "==": ('run t as X.`` where a=="1";', "run", 1, 23, f"expected {VALUE}, found '='"),
    "parenthesis": ('run t as X.`` where (a="1");', "run", 1, 21, "expected an option such as key=\"value\", found '('"),
    "option twice": ('run t as X.`` where a="1" and a="2";', "run", 1, 31, 'option "a" is given twice'),
    # missing alias and other missing parts
    "load without alias": ("load text.`/x`;", "load", 1, 15,
                           'expected "where key=value" or "as NAME" to name the table, found \';\''),
    "load where without alias": ('load text.`/x` where wholetext="true";', "load", 1, 38,
                                 'expected "and key=value" or "as NAME" to name the table, found \';\''),
    "load as nothing": ("load text.`/x` as;", "load", 1, 18, "expected a table name, found ';'"),
    "load at the cell's end": ("load text.`/x`", "load", 1, 15,
                               'expected "where key=value" or "as NAME" to name the table, found the end of the cell'),
    "select without alias": ("select * from t;", "select", 1, 16,
                             'expected "as NAME" at the end of the select, to name its result table'),
    "select alias not last": ("select * from t as u where x = 1;", "select", 1, 33,
                              'expected "as NAME" at the end of the select, to name its result table'),
    "run without as": ("run t;", "run", 1, 6, 'expected "as" and a transform such as LLM.``, found \';\''),
    "run without transform": ("run t as;", "run", 1, 9,
                              "expected a transform such as TableRepartition.`` or LLM.``, found ';'"),
    "load without path": ("load text /x as t;", "load", 1, 11,
                          "expected '.' and a back-quoted path, as in text.`/data/*.txt`, found '/'"),
    "load without format": ("load `/x` as t;", "load", 1, 6, 'expected a format such as text.`/path`, found "`/x`"'),
    "run without input": ("run as LLM.``;", "run", 1, 5, 'expected a table name (or command), found "as"'),
    "set without name": ('set ="1";', "set", 1, 5, "expected a variable name, found '='"),
    "setup without value": ("!byzerllm setup;", "!byzerllm setup", 1, 16,
                            'expected a setting such as sfft or "num_gpus=24", found \';\''),
    "unclosed (": ("select (1 as t;", "select", 1, 15, "expected ')' to close the '(' at line 1, column 8"),
    "unclosed ( at the end": ("select (1\nas t", "select", 2, 5, "expected ')' to close the '(' at line 1, column 8"),
    "unmatched )": ("select 1) as t;", "select", 1, 9, "')' without a matching '('"),
}


@pytest.mark.parametrize("cell, statement, line, column, message", CASES.values(), ids=CASES.keys())
def test_syntax_error(cell, statement, line, column, message):
    with pytest.raises(ByzerError) as info:
        parse_cell(cell)
    error = info.value
    assert (error.message, error.statement, error.line, error.column) == (message, statement, line, column)
    assert error.source_line == cell.split("\n")[line - 1]
    rendered = str(error).splitlines()
    assert len(rendered) <= 3 and rendered[-1] == " " * (4 + column - 1) + "^"


@pytest.mark.parametrize("byte", ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_refused(byte):
    with pytest.raises(ByzerError) as info:
        parse_cell(f"load text.`/x`\nwhere a=\"{byte}\" as t;")
    error = info.value
    assert error.message == f"control character U+{ord(byte):04X} is not allowed"
    assert (error.line, error.column) == (2, 10)
    assert len(str(error).splitlines()) == 3 and byte not in str(error)


def test_tab_newline_and_carriage_return_are_fine():
    assert len(parse_cell("set\ta\t=\t'x\ty';\r\n\r\nset b=1;\n")) == 2


# (text, variables, span, line, column, message)
INTERPOLATION_CASES = {
    "undefined": ("x ${ds_confg}", {"ds_config": "{}"}, Span(3, 5, "and a='x ${ds_confg}'"), 3, 10,
                  'undefined variable ${ds_confg} (did you mean "ds_config"?)'),
    "nothing close": ("${nope}", {"ds_config": "{}"}, Span(1, 1, "${nope}"), 1, 1, "undefined variable ${nope}"),
    "second line": ("a\n  b ${x}", {}, Span(4, 20, "set v='''a"), 5, 5, "undefined variable ${x}"),
    "unterminated": ("a ${b", {"b": "1"}, Span(1, 1, "a ${b"), 1, 3,
                     "expected a variable name and '}' after '${' (write \\${ for a literal ${)"),
}


@pytest.mark.parametrize("text, variables, span, line, column, message", INTERPOLATION_CASES.values(),
                         ids=INTERPOLATION_CASES.keys())
def test_interpolation_error(text, variables, span, line, column, message):
    with pytest.raises(ByzerError) as info:
        interpolate(text, variables, {"MODEL_DIR": "/m"}, span=span)
    error = info.value
    assert (error.message, error.line, error.column) == (message, line, column)
    rendered = str(error).splitlines()
    assert len(rendered) <= 3 and rendered[-1] == " " * (4 + column - 1) + "^"


PIECES = ["load", "select", "run", "set", "!byzerllm", "setup", "as", "where", "and", "text", ".", "`", "``",
          "`/x`", "'", '"', "'''", ";", "=", "(", ")", "--", "\n", " ", "t", "x=1", '"v"', "${a}", "；", "\\",
          ",", "中", "\t"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=16))
def test_any_text_parses_or_fails_with_a_located_message(pieces):
    try:
        parse_cell(" ".join(pieces))
    except ByzerError as error:
        assert error.line is not None and error.column is not None
        assert len(str(error).splitlines()) <= 3
        # No grammar-internal names (SETUP_ARG, __ANON_0) in what the user reads; quoted examples of what
        # is valid ("num_gpus=24") are the user's own vocabulary and may hold underscores.
        assert "_" not in re.sub(r'"[^"]*"|`[^`]*`', "", error.message.split(",")[0])
