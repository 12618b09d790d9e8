"""Bad `run command as LLM` statements fail in seconds with one located line, before any job starts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from tests.support.tiny import make_tiny_llama_dir, train_sentencepiece


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    # Positions above the default max_length (1024), so that the pre-flight check lets the other checks speak.
    return make_tiny_llama_dir(root / "llama", train_sentencepiece(root / "tok"), max_position_embeddings=2048)


@pytest.fixture
def session(byzer, text_files):
    byzer(f"""load text.`{text_files}/*.py` where wholetext="true" as raw;
select value as text, file from raw as docs;
select file from raw as no_text;""")
    return byzer


def _run(model_dir, extra: str, *, table: str = "docs") -> str:
    return f"""!byzerllm setup "num_gpus=2";
run command as LLM.`` where name="bad-job"
and pretrainedModelType="sfft/llama2"
and localModelDir="{model_dir}"
and inputTable="{table}"
{extra};"""


CASES = [
    ('and learningRate="1"', 'unknown parameter `learningRate`', 6),
    ('and inputTabel="docs"', 'did you mean "inputTable"', 6),
    ('and `sfft.int.max_lenght`="128"', 'did you mean "max_length"', 6),
    ('and `sfft.int.max_length`="abc"', 'must be an integer, got "abc"', 6),
    ('and `sfft.str.max_length`="128"', "max_length is an integer; write `sfft.int.max_length`", 6),
    ('and `sfft.int.max_length`="-5"', "max_length must be between 2 and", 6),
    ('and detached="maybe"', 'must be "true" or "false"', 6),
    ("and deepspeedConfig='''{\"zero_optimization\": {\"stage\": 3,}}'''", "deepspeedConfig is not valid JSON", 6),
    ("and deepspeedConfig='''{\"optimizer\": {\"type\": \"AdamX\"}}'''", 'unknown optimizer', 6),
    ("and deepspeedConfig='''{\"zero_optimization\": {\"stage\": 7}}'''", "zero_optimization.stage", 6),
    ("and deepspeedConfig='''{\"zero_optimisation\": {\"stage\": 3}}'''", 'did you mean "zero_optimization"', 6),
    ("and deepspeedConfig='''{\"train_batch_size\": 64}'''", "train_batch_size: 64 disagrees", 6),
    ('and Name="other"', "`Name` is given twice", 6),
    ('and `sfft.str.model_path`="/elsewhere"', "is localModelDir under another name", 6),
    ('and `sfft.str.report_to`="tensorboard,mlfow"', 'did you mean "mlflow"', 6),
]


@pytest.mark.parametrize("extra, message, line", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_parameters(session, model_dir, extra, message, line):
    with pytest.raises(UsageError) as info:
        session(_run(model_dir, extra))
    text = str(info.value)
    assert message in text
    assert f"line {line}" in text
    assert len(text.splitlines()) <= 3


@pytest.mark.parametrize("name", ["../escape", "a/b", "$(reboot)", ".hidden"])
def test_job_names_cannot_escape_the_prefix_or_reach_a_shell(session, model_dir, name):
    with pytest.raises(UsageError, match="invalid job name"):
        session(_run(model_dir, "").replace('name="bad-job"', f'name="{name}"'))


def test_missing_model_folder(session, tmp_path):
    with pytest.raises(UsageError, match="is not a model folder"):
        session(_run(tmp_path / "nope", ""))


def test_table_without_text_column(session, model_dir):
    with pytest.raises(UsageError, match="has no `text` column"):
        session(_run(model_dir, "", table="no_text"))


def test_unknown_table(session, model_dir):
    with pytest.raises(UsageError, match='did you mean "docs"'):
        session(_run(model_dir, "", table="doc"))


def test_more_workers_than_the_cluster_holds(session, model_dir):
    with pytest.raises(UsageError, match="CPU slots but the cluster has"):
        session(_run(model_dir, "").replace("num_gpus=2", "num_gpus=500"))


def test_max_length_above_the_models_positions_is_stopped_before_launch(session, tmp_path):
    small = make_tiny_llama_dir(tmp_path / "small", train_sentencepiece(tmp_path / "tok"))  # 256 positions
    with pytest.raises(UsageError, match="max_length 1024 is above the model's 256 positions"):
        session(_run(small, ""))


def test_missing_model_type(session, model_dir):
    with pytest.raises(UsageError, match="pretrainedModelType is required"):
        session(_run(model_dir, "").replace('and pretrainedModelType="sfft/llama2"', ""))


def test_nccl_interface_found_for_loopback():
    from byzer_magic.runtime.network import interface_for_ip

    assert interface_for_ip("127.0.0.1") == "lo"


def test_dry_run_plans_without_training(session, model_dir, capsys):
    plan = session(_run(model_dir, 'and dryRun="true" and `sfft.int.max_length`="64"'))
    assert "Run plan" in str(plan) and plan.workers == 2 and plan.max_length == 64
    assert not (Path(os.environ["BYZER_MAGIC_JOBS"]) / "bad-job").exists()  # nothing was submitted
