"""parse_cell and interpolate: every statement form, the user document's cells verbatim, positions."""
from __future__ import annotations

import json

import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.language.interpolation import interpolate
from byzer_magic.language.parser import parse_cell
from byzer_magic.language.statements import (LoadStatement, RunStatement, SelectStatement, SetStatement,
                                             SetupStatement, Span)

# The three ```sql cells of byzer-llm-pretrain.zh.md, copied verbatim (trailing spaces included).
LOAD_CELL = """\
-- 加载收集到的文本数据
load text.`file:///home/byzerllm/data/raw_data/*`
where wholetext="true" as trainData;

select value as text,file from trainData  as newTrainData;
"""

TRAIN_CELL = """\

-- 把数据切割成24份，因为我们后续要用24块卡来训练
-- 这里需要保证 Byzer引擎的所在服务器至少有24+CPU 可用，否则可能会导致
-- 任务hang住
run newTrainData as TableRepartition.`` where partitionNum="24" and partitionCols="file" as finalTrainData;


--设置环境，比如总共使用 24 块卡做预训练
!byzerllm setup sfft;
!byzerllm setup "num_gpus=24";


-- 指定原始的模型进行二次预训练
run command as LLM.`` where 
-- 给训练起个名字
name="sfft-wiliam-llama2-pretrain"
and localPathPrefix="/home/byzerllm/models/sfft/jobs"
and pretrainedModelType="sfft/llama2"
-- 原始模型
and localModelDir="/home/byzerllm/models/Llama-2-7b-chat-hf"
-- and localDataDir="/home/byzerllm/data/raw_data"

-- 异步执行，因为这种训练往往需要几天几周甚至几个月。用户可以在
-- Ray Dashboard 找到 tensorboard 的地址，然后观察Loss
and detached="true"
and keepPartitionNum="true"

-- 配置deepspeed, 可选
-- and deepspeedConfig='''${ds_config}'''

-- 用来做预训练的数据
and inputTable="finalTrainData"
and outputTable="llama2_cn"
and model="command"

-- 一些特殊的预训练参数
and `sfft.int.max_length`="128"
-- 一些异构服务器网络设备号命名不统一，会导致ncll通信失败，这里设置为true就好
and `sfft.bool.setup_nccl_socket_ifname_by_ip`="true"
;
"""

DS_CONFIG_CELL = """\
set ds_config='''
{
  "gradient_accumulation_steps": 1,
  "train_micro_batch_size_per_gpu": 1,
  "prescale_gradients": false,
  "zero_allow_untested_optimizer": true,
  "optimizer": {
    "type": "AdamW",
    "params": {
      "lr": 1e-8,
      "eps": 1.0e-8,
      "betas": [
        0.9,
        0.95
      ],
      "weight_decay": 0.1
    }
  },
  "tensorboard": {
    "enabled": true
  },
  "zero_optimization": {
    "stage": 3,
    "offload_optimizer": {
         "device": "cpu"         
     },           
    "offload_param": {
         "device": "cpu"
    },
    "contiguous_gradients": true,
    "allgather_bucket_size": 1e8,
    "reduce_bucket_size": 1e8,
    "overlap_comm": true,
    "reduce_scatter": true
  },
  "steps_per_print": 16,
  "gradient_clipping": 1.0,
  "wall_clock_breakdown": true,
  "bf16": {
    "enabled": true
  }
}
''';
"""


def only(cell: str):
    [statement] = parse_cell(cell)
    return statement


def options(statement) -> dict[str, str]:
    return {o.key: o.value for o in statement.options}


# --- the user document ------------------------------------------------------------------------------

def test_load_cell_from_the_user_document():
    load, select = parse_cell(LOAD_CELL)
    assert isinstance(load, LoadStatement)
    assert (load.format, load.path, load.alias) == ("text", "file:///home/byzerllm/data/raw_data/*", "trainData")
    assert options(load) == {"wholetext": "true"}
    assert load.span == Span(2, 1, "load text.`file:///home/byzerllm/data/raw_data/*`")
    assert load.text == 'load text.`file:///home/byzerllm/data/raw_data/*`\nwhere wholetext="true" as trainData'
    assert load.options[0].span == Span(3, 7, 'where wholetext="true" as trainData;')
    assert isinstance(select, SelectStatement)
    assert (select.sql, select.alias) == ("select value as text,file from trainData", "newTrainData")
    assert select.span == select.sql_span == Span(5, 1, "select value as text,file from trainData  as newTrainData;")


def test_training_cell_from_the_user_document():
    repartition, sfft, gpus, llm = parse_cell(TRAIN_CELL)
    assert isinstance(repartition, RunStatement)
    assert (repartition.input, repartition.transform, repartition.path, repartition.alias) == (
        "newTrainData", "TableRepartition", "", "finalTrainData")
    assert options(repartition) == {"partitionNum": "24", "partitionCols": "file"}
    assert repartition.span.line == 5
    assert (sfft.value, sfft.quoted, gpus.value, gpus.quoted) == ("sfft", False, "num_gpus=24", True)
    assert isinstance(gpus, SetupStatement) and gpus.span == Span(10, 1, '!byzerllm setup "num_gpus=24";')
    assert (llm.input, llm.transform, llm.path, llm.alias) == ("command", "LLM", "", None)
    assert options(llm) == {
        "name": "sfft-wiliam-llama2-pretrain",
        "localPathPrefix": "/home/byzerllm/models/sfft/jobs",
        "pretrainedModelType": "sfft/llama2",
        "localModelDir": "/home/byzerllm/models/Llama-2-7b-chat-hf",
        "detached": "true",
        "keepPartitionNum": "true",
        "inputTable": "finalTrainData",
        "outputTable": "llama2_cn",
        "model": "command",
        "sfft.int.max_length": "128",
        "sfft.bool.setup_nccl_socket_ifname_by_ip": "true",
    }  # the commented-out localDataDir and deepspeedConfig are not there
    assert llm.span == Span(14, 1, "run command as LLM.`` where ")
    assert llm.options[0].span == Span(16, 1, 'name="sfft-wiliam-llama2-pretrain"')
    assert llm.options[-1].span == Span(39, 5, 'and `sfft.bool.setup_nccl_socket_ifname_by_ip`="true"')
    assert llm.text.endswith('and `sfft.bool.setup_nccl_socket_ifname_by_ip`="true"')


def test_ds_config_cell_from_the_user_document():
    [statement] = parse_cell(DS_CONFIG_CELL)
    assert isinstance(statement, SetStatement) and statement.name == "ds_config"
    assert statement.value == DS_CONFIG_CELL[len("set ds_config='''"):-len("''';\n")]
    config = json.loads(statement.value)
    assert config["zero_optimization"]["stage"] == 3 and config["optimizer"]["params"]["lr"] == 1e-8


# --- statement forms --------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["", "   \n\n", "-- 只有注释\n--another\n", ";", ";;\n;", "/* block */"])
def test_cells_without_statements(cell):
    assert parse_cell(cell) == []


def test_keywords_are_case_insensitive():
    load, select, run, set_, setup = parse_cell(
        "LOAD Text.`/x` WHERE a=\"1\" AND b=2 AS T; SELECT * FROM T As U; Run U AS TableRepartition.`` "
        "Where partitionNum=\"2\" aS V; SET x='y'; !ByzerLLM SETUP sfft;")
    assert (load.format, load.alias, options(load)) == ("Text", "T", {"a": "1", "b": "2"})
    assert (select.sql, select.alias) == ("SELECT * FROM T", "U")
    assert (run.transform, run.alias, options(run)) == ("TableRepartition", "V", {"partitionNum": "2"})
    assert (set_.name, set_.value, setup.value) == ("x", "y", "sfft")
    assert [s.kind for s in (load, select, run, set_, setup)] == ["load", "select", "run", "set", "setup"]


def test_names_that_look_like_keywords_are_names():
    load = only("load text.`/x` where as=\"1\" and select=\"2\" as loader")
    assert (options(load), load.alias) == ({"as": "1", "select": "2"}, "loader")
    assert only("run load as setup").input == "load"


def test_the_last_statement_may_leave_out_its_semicolon():
    load, select = parse_cell("load text.`/x` as t;\nselect * from t as u  -- done\n")
    assert (select.alias, select.text) == ("u", "select * from t as u")


def test_many_statements_on_one_line_and_one_statement_on_many_lines():
    a, b = parse_cell("set a=1; set b=2;")
    assert (a.span.column, b.span.column, b.text) == (1, 10, "set b=2")
    run = only("run\n  t\nas\n  X.`p`\nwhere\n  k = v\n;")
    assert (run.input, run.transform, run.path, options(run)) == ("t", "X", "p", {"k": "v"})
    assert run.options[0].span == Span(6, 3, "  k = v")


def test_load_forms():
    load = only("load parquet.`s3://b/k/*.parquet` options mergeSchema=true as 训练数据;")
    assert (load.format, load.path, load.alias, options(load)) == (
        "parquet", "s3://b/k/*.parquet", "训练数据", {"mergeSchema": "true"})
    assert only("load text.`/x` as t").options == ()


def test_run_forms():
    run = only("run `my table` as LLM")
    assert (run.input, run.transform, run.path, run.options, run.alias) == ("my table", "LLM", "", (), None)
    run = only("run t as TableRepartition.`` where partitionNum=4 as u")
    assert (run.path, options(run), run.alias) == ("", {"partitionNum": "4"}, "u")


def test_option_keys_and_values():
    run = only("run command as LLM.`` where `sfft.int.max_length`=128 and sfft.float.lr=1e-5 "
               "and a=${x} and b='${y}' and c=\"-1\" and d=/data/x-y.txt -- comment\n and e=''''quoted' '''")
    assert [o.key for o in run.options] == ["sfft.int.max_length", "sfft.float.lr", "a", "b", "c", "d", "e"]
    assert options(run) == {"sfft.int.max_length": "128", "sfft.float.lr": "1e-5", "a": "${x}", "b": "${y}",
                            "c": "-1", "d": "/data/x-y.txt", "e": "'quoted' "}


@pytest.mark.parametrize("written, value", [
    (r'"a\"b"', 'a"b'), (r"'a\'b'", "a'b"), (r'"tab\there\nnew"', "tab\there\nnew"),
    (r'"back\\slash"', "back\\slash"), (r'"\u4e2d"', "中"), (r'"C:\data\d+"', r"C:\data\d+"),
    (r'"\${x}"', r"\${x}"), (r'"\b\0\x41"', r"\b\0\x41"), ("'''no \\n escapes\n\"here\"'''", 'no \\n escapes\n"here"'),
    ("\"it's\"", "it's"), ("'say \"hi\"'", 'say "hi"'), ('""', ""), ("''", ""), ("''''''", ""),
])
def test_string_escapes(written, value):
    assert only(f"set v={written}").value == value


def test_set_forms():
    assert [(s.name, s.value) for s in parse_cell(
        "set a='''x\ny''';\nset b=\"2\"; set c = bare-word.v1 ; set d=\"t\" where type=\"text\";")] == [
        ("a", "x\ny"), ("b", "2"), ("c", "bare-word.v1"), ("d", "t")]


def test_set_keeps_its_options_and_where_its_value_starts():
    a, b = parse_cell("set n=\"select count(*) from t\" where type=\"sql\";\nset m='''select\n 1''' options type='sql';")
    assert (a.value, [(o.key, o.value) for o in a.options]) == ("select count(*) from t", [("type", "sql")])
    assert (a.value_span.line, a.value_span.column, a.value_raw) == (1, 8, "select count(*) from t")
    assert (b.value_span.line, b.value_span.column, b.value_raw) == (2, 10, "select\n 1")
    assert [o.key for o in b.options] == ["type"]


def test_where_may_start_with_and():
    """Byzer-LLM's README writes `where` and then lines that each start with `and`."""
    run = only('run command as LLM.`` where\nand name="x"\n-- a comment\nand localModelDir="/m"\n'
               'and `sfft.int.max_length`="128";')
    assert [(o.key, o.value, o.span.line) for o in run.options] == [
        ("name", "x", 2), ("localModelDir", "/m", 4), ("sfft.int.max_length", "128", 5)]
    assert [o.key for o in only('load text.`/d` where and wholetext="true" as t').options] == ["wholetext"]


def test_select_strings_follow_the_dialect():
    """Spark: '...' and "..." are strings with backslash escapes; DuckDB: '' doubles a quote, "..." names."""
    spark = only(r"""select 'it\'s; fine' as a, "x\" as y; z" as b from t as u""")
    assert (spark.alias, spark.sql) == ("u", r"""select 'it\'s; fine' as a, "x\" as y; z" as b from t""")
    duck = parse_cell(r"""select 'C:\' as path, "odd""name" from t as u""", sql_dialect="duckdb")[0]
    assert (duck.alias, duck.sql) == ("u", r"""select 'C:\' as path, "odd""name" from t""")
    with pytest.raises(ByzerError, match="unterminated string"):
        parse_cell(r"select 'C:\' as path from t as u")  # in Spark the backslash escapes the quote
    with pytest.raises(ByzerError, match='unknown SQL dialect "mysql"'):
        parse_cell("select 1 as a", sql_dialect="mysql")


def test_setup_forms():
    assert [(s.value, s.quoted) for s in parse_cell(
        "!byzerllm setup sfft; !byzerllm setup \"num_gpus=24\"; !byzerllm setup 'maxConcurrency=1'")] == [
        ("sfft", False), ("num_gpus=24", True), ("maxConcurrency=1", True)]


def test_select_sql_is_raw_and_only_the_last_top_level_as_is_the_alias():
    select = only("select a as b, 'x;y -- not a comment' as c, \"odd;name\", (select 1 as q) as d\n"
                  "from t -- a comment; with as x\n"
                  "where e = 'it''s' and f in (select g as h from u) as result")
    assert select.alias == "result"
    assert select.sql.startswith("select a as b, 'x;y -- not a comment'")
    assert select.sql.endswith("where e = 'it''s' and f in (select g as h from u)")


def test_select_keeps_its_comments_but_not_a_trailing_one():
    select = only("select *\n-- 中文\nfrom t -- trailing\nas u;")
    assert select.sql == "select *\n-- 中文\nfrom t"


def test_select_over_several_lines_with_union_and_cte():
    first, second = parse_cell("select * from (with x as (select 1 as n)\nselect n from x\nunion all\nselect 2)\nas t;\n"
                               "select ${col}, concat(text, '!') from t\n as u;")
    assert first.alias == "t" and first.sql.count("select") == 4
    assert only("select 1 as n\nunion all\nselect 2\nunion\nselect 3 as t").sql.count("select") == 3
    assert (second.sql, second.span.line, second.sql_span) == (
        "select ${col}, concat(text, '!') from t", 6, Span(6, 1, "select ${col}, concat(text, '!') from t"))


def test_control_characters_tab_and_crlf_are_fine():
    load, select = parse_cell("load\ttext.`/x`\r\nas t;\r\nselect 1 as u;\r\n")
    assert (load.alias, select.alias, select.span.source_line) == ("t", "u", "select 1 as u;")


# --- interpolation ----------------------------------------------------------------------------------

def test_interpolate_variables_then_python_namespace():
    assert interpolate("${a}-${ b }-${n}", {"a": "x", "b": "y"}, {"n": 3, "a": "no"}) == "x-y-3"
    assert interpolate("no variables", {}) == "no variables"
    assert interpolate("$x {y} $ {z}", {}) == "$x {y} $ {z}"


def test_interpolate_escape():
    assert interpolate(r"\${a} ${a} \${b}", {"a": "1"}) == "${a} 1 ${b}"


def test_interpolate_is_one_pass():
    assert interpolate("${a}", {"a": "${b}", "b": "no"}) == "${b}"


def test_undefined_variable_suggests_a_close_name():
    with pytest.raises(ByzerError) as info:
        interpolate("x ${ds_confg}", {"ds_config": "{}"}, {"MODEL_DIR": "/m", "_hidden": 1})
    assert info.value.message == 'undefined variable ${ds_confg} (did you mean "ds_config"?)'
    assert info.value.line is None
    with pytest.raises(ByzerError, match=r'did you mean "MODEL_DIR"'):
        interpolate("${model_dir}", {}, {"MODEL_DIR": "/m"})


def test_undefined_variable_in_select_points_at_it():
    select = only("-- c\nselect ${col} from t as u")
    with pytest.raises(ByzerError) as info:
        interpolate(select.sql, {}, span=select.sql_span)
    error = info.value
    assert (error.line, error.column, error.source_line) == (2, 8, "select ${col} from t as u")
    assert str(error).splitlines()[-1] == "           ^"


def test_undefined_variable_in_an_option_points_at_it():
    run = only('run command as LLM.`` where\n  inputTable="a" and deepspeedConfig="x${ds}"')
    option = run.options[1]
    with pytest.raises(ByzerError) as info:
        interpolate(option.value, {}, span=option.span)
    assert (info.value.line, info.value.column) == (2, 40)


def test_undefined_variable_in_a_multi_line_value_points_at_it():
    set_ = only("set v='''\n{\n  \"a\": ${aa}\n}''';")
    with pytest.raises(ByzerError) as info:
        interpolate(set_.value, {}, span=Span(1, 10, set_.span.source_line))
    assert (info.value.line, info.value.column, info.value.source_line) == (3, 8, '  "a": ${aa}')


def test_a_dollar_brace_without_a_name_is_an_error():
    with pytest.raises(ByzerError, match=r"expected a variable name and '\}' after '\$\{'"):
        interpolate("a ${oops", {})
