"""Cells that are wrong when they run: each fails with a UsageError naming the statement, line and
column, in one line (plus the source line and a caret), and leaves no trace of the failing statement."""
from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError

LOAD = 'load text.`{dir}/*.py` where wholetext="true" as trainData;\n'  # line 1 of most cells

# (cell, statement, line, column, message regex); {dir} is the folder of text files.
BAD_CELLS = [
    # files
    ("load text.`{dir}/nope/*.txt` as t;", "load", 1, 12, r"no files match .*/nope/\*\.txt"),
    ("load text.`file:///no/such/file.txt`\nwhere wholetext=\"true\" as t;", "load", 1, 12,
     r"no files to load: file:///no/such/file\.txt does not exist"),
    ("load txt.`{dir}` as t;", "load", 1, 6, r'unknown format "txt" \(did you mean "text"\?\); formats: text'),
    ("load text.`/data` where wholetxt=\"true\" as t;", "load", 1, 25,
     r'unknown option "wholetxt" for load text \(did you mean "wholetext"\?\); options: wholetext'),
    ("load text.`/data` where wholetext=\"yes\" as t;", "load", 1, 25,
     r'wholetext must be "true" or "false", not "yes"'),
    ("load text.`${{data_dir}}/*.py` as t;", "load", 1, 12, r"undefined variable \$\{data_dir\}"),
    # SQL
    (LOAD + "select value from trainDat as x;", "select", 2, 19,
     r'unknown table trainDat \(did you mean "trainData"\?\); tables: trainData'),
    (LOAD + "select valu as text\nfrom trainData as x;", "select", 2, 8,
     r'Binder Error: Referenced column "valu" not found in FROM clause! Candidate bindings: "value", "file"'),
    (LOAD + "select value,\n  file\nfrom trainData where lenght(value) > 3 as x;", "select", 4, 22,
     r'Scalar Function with name lenght does not exist! Did you mean "length"\?'),
    (LOAD + "select value frm trainData as x;", "select", 2, 18, r'Parser Error: syntax error at or near "trainData"'),
    (LOAD + "select value from trainData where file = ${{wanted}} as x;", "select", 2, 42,
     r"undefined variable \$\{wanted\}"),
    (LOAD + "select t.value from trainData t join other o using (file) as x;", "select", 2, 38,
     r"unknown table other; tables: trainData"),
    # TableRepartition
    (LOAD + 'run trainData as TableRepartitions.`` where partitionNum="2" as x;', "run ... as TableRepartitions",
     2, 18, r'unknown transform "TableRepartitions" \(did you mean "TableRepartition"\?\); '
            r"transforms: TableRepartition, LLM"),
    (LOAD + 'run trainDat as TableRepartition.`` where partitionNum="2" as x;', "run ... as TableRepartition",
     2, 5, r'unknown table trainDat \(did you mean "trainData"\?\)'),
    (LOAD + 'run trainData as TableRepartition.`` where partitionNum="abc" as x;',
     "run ... as TableRepartition", 2, 44, r'partitionNum must be a positive whole number, not "abc"'),
    (LOAD + 'run trainData as TableRepartition.`` where partitionNum="-3" as x;',
     "run ... as TableRepartition", 2, 44, r'partitionNum must be a positive whole number, not "-3"'),
    (LOAD + 'run trainData as TableRepartition.``\nwhere partitionNum="0" as x;',
     "run ... as TableRepartition", 3, 7, r'partitionNum must be a positive whole number, not "0"'),
    (LOAD + 'run trainData as TableRepartition.`` where partitionNum="2"\nand partitionCols="fil" as x;',
     "run ... as TableRepartition", 3, 5, r'unknown column fil \(did you mean "file"\?\); columns: value, file'),
    (LOAD + 'run trainData as TableRepartition.`` where partitionNumber="2" as x;',
     "run ... as TableRepartition", 2, 44,
     r'unknown option "partitionNumber" for TableRepartition \(did you mean "partitionNum"\?\)'),
    (LOAD + 'run trainData as TableRepartition.`` where partitionCols="file" as x;',
     "run ... as TableRepartition", 2, 1, r'TableRepartition needs partitionNum="N"'),
    (LOAD + 'run trainData as TableRepartition.`` where partitionNum="${{n}}" as x;',
     "run ... as TableRepartition", 2, 58, r"undefined variable \$\{n\}"),
    # setup
    ('!byzerllm setup "num_gpu=2";', "!byzerllm setup", 1, 18,
     r'unknown setup key "num_gpu" \(did you mean "num_gpus"\?\); keys: num_gpus, num_cpus_per_worker, use_gpu'),
    ('!byzerllm setup "num_gpus=abc";', "!byzerllm setup", 1, 18,
     r'num_gpus must be a positive whole number, not "abc"'),
    ('!byzerllm setup "num_gpus=-1";', "!byzerllm setup", 1, 18,
     r'num_gpus must be a positive whole number, not "-1"'),
    ('!byzerllm setup "num_cpus_per_worker=0";', "!byzerllm setup", 1, 18,
     r'num_cpus_per_worker must be a positive number, not "0"'),
    ('!byzerllm setup "use_gpu=maybe";', "!byzerllm setup", 1, 18, r'use_gpu must be "true" or "false"'),
    ("!byzerllm setup sft;", "!byzerllm setup", 1, 17, r'unknown setup "sft" \(did you mean "sfft"\?\)'),
    # syntax (the parser's own tests cover these in depth): the magic still fails the cell cleanly
    ("load text.`{dir}` where wholetext=\"true as t;", "load", 1, None, r"unterminated string"),
    ("select 1 as a\nselect 2 as b;", "select", 1, None, r"expected ';' to end the statement"),
    ("select 1 as a;\nsel\x00ect 2 as b;", None, 2, None, r"."),
]


@pytest.mark.parametrize("cell, statement, line, column, message", BAD_CELLS,
                         ids=[f"{i}-{c[1] or 'char'}" for i, c in enumerate(BAD_CELLS)])
def test_bad_cell(byzer, text_files, cell, statement, line, column, message):
    with pytest.raises(UsageError) as info:
        byzer(cell.format(dir=text_files))
    text = str(info.value)
    first, *rest = text.split("\n")
    where = f"line {line}" + (f", column {column}" if column else "")
    if statement:
        assert first.startswith(f"in `{statement}` {where}"), text
    else:
        assert where in first, text
    assert re.search(message, first), text
    assert len(rest) in (0, 2), text  # one line, or one line + the source line and a caret under the spot
    if rest and column:
        assert rest[1].index("^") - len("    ") == column - 1, text


def test_no_traceback_and_run_all_stops(shell, capsys):
    result = shell.run_cell("%%byzerllm\nselect value from nowhere as x;")
    assert not result.success and isinstance(result.error_in_exec, UsageError)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "UsageError: in `select` line 1, column 19: unknown table nowhere" in captured.err


def test_error_keeps_earlier_statements_and_drops_the_failing_one(byzer, shell, text_files):
    with pytest.raises(UsageError, match="line 3"):
        byzer(f"set kept='1';\nload text.`{text_files}/*.py` as t;\nselect valu from t as u;")
    session = shell.magics_manager.registry["ByzerMagic"].session
    assert session.variables == {"kept": "1"} and list(session.tables) == ["t"]


def test_syntax_error_anywhere_runs_nothing(byzer, shell, text_files):
    with pytest.raises(UsageError, match="line 3"):
        byzer(f"set b='1';\nload text.`{text_files}/*.py` as t2;\nselect from '")
    session = shell.magics_manager.registry["ByzerMagic"].session
    assert session.variables == {} and session.tables == {}


def test_failed_statement_leaves_existing_values(byzer, shell, text_files):
    byzer(f'!byzerllm setup "num_gpus=2";\nload text.`{text_files}/*.py` as t;')
    session = shell.magics_manager.registry["ByzerMagic"].session
    before = session.tables["t"]
    for cell in ['!byzerllm setup "num_gpus=-1";', "select valu from t as t;",
                 'run t as TableRepartition.`` where partitionNum="2" and partitionCols="nope" as t;',
                 "load text.`/no/such/dir/*` as t;"]:
        with pytest.raises(UsageError):
            byzer(cell)
    assert session.setup == {"num_gpus": 2} and session.tables == {"t": before}


def test_bad_rows_fail_the_preview_not_the_kernel(byzer, shell, text_files):
    shell.run_line_magic("config", 'ByzerMagic.sql_dialect = "duckdb"')  # Spark's cast gives NULL instead
    try:
        with pytest.raises(UsageError, match="while reading table n: Conversion Error: Could not convert"):
            byzer(f"load text.`{text_files}/*.py` as t;\nselect value::int as n from t as n;")
    finally:
        shell.run_line_magic("config", 'ByzerMagic.sql_dialect = "spark"')


@pytest.mark.parametrize("line, message", [
    ("-o", "-o needs a Python variable name"),
    ("-o 1x", "-o needs a Python variable name"),
    ("--rows 3", 'unknown %%byzerllm argument "--rows"'),
])
def test_bad_magic_arguments(byzer, line, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        byzer("set a='1';", line=line)
