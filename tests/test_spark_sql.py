"""Selects in Spark SQL (the default dialect), translated for DuckDB by sqlglot: strings, escapes,
Spark's functions, errors located on the user's text; ``%config ByzerMagic.sql_dialect``."""
from __future__ import annotations

import json

import pytest
from IPython.core.error import UsageError

from byzer_magic.runtime.tables import SqlError, translate

SFT = [  # the fine-tune format (instruction / output), two languages
    {"instruction": "Say hi", "output": "hi", "lang": "en", "meta": '{"source": {"name": "a/b/c.txt"}}',
     "tags": "x y z"},
    {"instruction": "说你好", "output": "你好", "lang": "zh", "meta": '{"source": {"name": "d/e.txt"}}',
     "tags": "p q"},
    {"instruction": "Count", "output": "1 2 3", "lang": "en", "meta": '{"source": {"name": "f.txt"}}',
     "tags": ""},
]


@pytest.fixture
def sft(byzer, tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in SFT), encoding="utf-8")
    byzer(f"load json.`{path}` as sft;")
    return path


# ------------------------------------------------------------------------------ translation (no Ray)
@pytest.mark.parametrize("spark, duckdb", [
    ('select * from t where lang = "en"', "SELECT * FROM t WHERE lang = 'en'"),
    ('select concat(a, "\\n", b) from t', "SELECT a || '\n' || b FROM t"),
    ("select 'it\\'s', \"tab\\there\" from t", "SELECT 'it''s', 'tab\there' FROM t"),
    ("select `value` as `text` from `t`", 'SELECT "value" AS "text" FROM "t"'),
    ("select get_json_object(meta, '$.a') from t", "SELECT meta ->> '$.a' FROM t"),
    ("select explode(split(tags, ' ')) from t", "SELECT UNNEST(STR_SPLIT_REGEX(tags, ' ')) FROM t"),
    ("select nvl(a, 'x'), instr(a, 'b'), size(split(a, ',')) from t",
     "SELECT COALESCE(a, 'x'), STRPOS(a, 'b'), ARRAY_LENGTH(STR_SPLIT_REGEX(a, ',')) FROM t"),
])
def test_spark_becomes_duckdb(spark, duckdb):
    assert translate(spark).sql == duckdb
    assert translate(spark, "duckdb").sql == spark  # DuckDB's dialect: run as written


@pytest.mark.parametrize("sql, message, line, column", [
    ("select value frm t", 'Parser Error: syntax error at or near "t"', 1, 18),
    ("select (value\nfrom t", "Parser Error: syntax error at or near \"from\": expected ')'", 2, 1),
])
def test_sqlglot_errors_are_located(sql, message, line, column):
    with pytest.raises(SqlError) as info:
        translate(sql)
    assert (info.value.message, info.value.sql_line, info.value.sql_column) == (message, line, column)


def test_positions_map_back_through_the_translation():
    sql = 'select concat(instruction, "\\n", output) as t,\n   lenght(`output`) from sft'
    tr = translate(sql)
    at = tr.sql.index("LENGHT") + 1
    assert tr.position(1, at) == (2, 4)
    at = tr.sql.index("output") + 1
    assert tr.position(1, at) == (1, 34)


# --------------------------------------------------------------------------- in cells, on Ray
def test_strings_escapes_and_filters(byzer, sft):
    frame = byzer('select concat(instruction, "\\n", output) as text, \'it\\\'s\' as q from sft '
                  'where lang = "en" as t;')
    assert sorted(frame["text"]) == ["Count\n1 2 3", "Say hi\nhi"]  # a real newline, not backslash-n
    assert set(frame["q"]) == {"it's"}


def test_spark_functions(byzer, sft):
    frame = byzer("select substring_index(get_json_object(meta, '$.source.name'), '/', -1) as name,\n"
                  "  substring_index(get_json_object(meta, '$.source.name'), '/', 1) as top\n"
                  "from sft as names;")
    assert sorted(zip(frame["name"], frame["top"])) == [("c.txt", "a"), ("e.txt", "d"), ("f.txt", "f.txt")]
    words = byzer("select explode(split(tags, ' ')) as word from sft where tags != '' as words;")
    assert sorted(words["word"]) == ["p", "q", "x", "y", "z"]
    lines = byzer("select posexplode(split(tags, ' ')) as (pos, word) from sft where tags != '' as lines;")
    assert sorted(zip(lines["word"], lines["pos"])) == [("p", 0), ("q", 1), ("x", 0), ("y", 1), ("z", 2)]
    counted = byzer("select lang, count(*) as n, collect_list(output) as outs from sft group by lang "
                    "order by lang as by_lang;")
    assert list(counted["n"]) == [2, 1] and sorted(counted["outs"][0]) == ["1 2 3", "hi"]


def test_error_inside_a_translated_select_points_at_the_users_text(byzer, sft):
    cell = 'select concat(instruction, "\\n", output) as text,\n  lenght(output) as n from sft as t;'
    with pytest.raises(UsageError) as info:
        byzer(cell)
    first, source, caret = str(info.value).split("\n")
    assert first.startswith("in `select` line 2, column 3: ") and 'lenght does not exist' in first
    assert source.strip() == "lenght(output) as n from sft as t;" and caret.index("^") - 4 == 2
    with pytest.raises(UsageError, match=r'line 1, column 34: .*Referenced column "outpt" not found'):
        byzer('select concat(instruction, "\\n", outpt) as text from sft as t;')


def test_posexplode_with_one_alias_is_spark_s_error_located():
    with pytest.raises(SqlError, match=r"posexplode makes two columns.*write `as \(pos, line\)`") as info:
        translate("select id,\n  posexplode(split(text, '\\n')) as line from t")
    assert (info.value.sql_line, info.value.sql_column) == (2, 36)  # the alias "line"


def test_duckdb_dialect_by_config(byzer, shell, sft):
    shell.run_line_magic("config", 'ByzerMagic.sql_dialect = "duckdb"')
    try:
        frame = byzer("select \"output\" as o, 'a\\n' as raw, 'it''s' as q from sft where lang = 'zh' as t;")
        assert list(frame["o"]) == ["你好"] and frame["raw"][0] == "a\\n" and frame["q"][0] == "it's"
        with pytest.raises(UsageError, match='Referenced column "en" not found'):
            byzer('select * from sft where lang = "en" as t;')
    finally:
        shell.run_line_magic("config", 'ByzerMagic.sql_dialect = "spark"')
    assert list(byzer('select output from sft where lang = "zh" as t;')["output"]) == ["你好"]


def test_aggregates_validate_on_empty_tables(byzer, sft):
    byzer('select * from sft where lang = "fr" as empty;')
    assert byzer("select count(*) as n from empty as c;")["n"].tolist() == [0]
    assert byzer("select count(*) as n, max(output) as m from sft as c;").to_dict("records") == [
        {"n": 3, "m": "你好"}]


# ------------------------------------------------------------------------ set ... where type="sql"
def test_set_sql_binds_the_scalar(byzer, shell, sft):
    byzer('set n="select count(*) from sft where lang = \\"en\\"" where type="sql";\n'
          "set longest='''select max(length(output))\nfrom sft''' where type=\"sql\";")
    session = shell.magics_manager.registry["ByzerMagic"].session
    assert session.variables["n"] == "2" and session.variables["longest"] == "5"
    frame = byzer("select output from sft where length(output) = ${longest} as t;")
    assert list(frame["output"]) == ["1 2 3"]
    byzer('set n="9" where type="defaultParam";')  # a default: the earlier value stays
    assert session.variables["n"] == "2"


@pytest.mark.parametrize("cell, line, column, message", [
    ('set n="select count(*) from sfft" where type="sql";', 1, 29, 'unknown table sfft (did you mean "sft"?)'),
    ("set n='''select\n  lenght(output) from sft''' where type=\"sql\";", 2, 3, "lenght does not exist"),
    ('set n="select \\"x\\", outpt from sft" where type="sql";', 1, 22, 'Referenced column "outpt" not found'),
    ('set n="select output from sft" where type="sql";', 1, 1, "binds one value: the query returns more than one"),
    ('set n="select lang, output from sft" where type="sql";', 1, 1, "returns 2 columns (lang, output)"),
    ('set n="ls /" where type="shell";', 1, 20, 'type="shell" is not supported'),
    ('set n="select 1" where type="sq";', 1, 24, 'unknown set type "sq" (did you mean "sql"?)'),
    ('set n="select 1" where tpye="sql";', 1, 24, 'unknown option "tpye" for set (did you mean "type"?)'),
])
def test_set_sql_errors_are_located(byzer, shell, sft, cell, line, column, message):
    with pytest.raises(UsageError) as info:
        byzer(cell)
    first = str(info.value).split("\n")[0]
    assert first.startswith(f"in `set` line {line}, column {column}: ") and message in first, first
    assert "n" not in shell.magics_manager.registry["ByzerMagic"].session.variables
