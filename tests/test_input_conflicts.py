"""Inputs that cannot go together are refused in the cell, before any job starts (kernel/job_spec.py)."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from tests.support.tiny import make_tiny_llama_dir, train_sentencepiece


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("conflicts")
    return make_tiny_llama_dir(root / "llama", train_sentencepiece(root / "tok"))


def run_llm(byzer, model_dir, jobs, extra: str, gpus: int = 2):
    return byzer(f"""!byzerllm setup "num_gpus={gpus}";
run command as LLM.`` where pretrainedModelType="sfft/llama2" and localModelDir="{model_dir}"
and localPathPrefix="{jobs}" and {extra};""")


def test_conflicting_inputs_fail_in_the_cell(byzer, text_files, model_dir, tmp_path):
    byzer(f'load text.`{text_files}/*.py` where wholetext="true" as raw; select value as text, file from raw as t;')
    byzer('run t as TableRepartition.`` where partitionNum="3" and partitionCols="file" as parts;')
    with pytest.raises(UsageError, match=r"localDataDir and inputTable are two inputs"):
        run_llm(byzer, model_dir, tmp_path, f'inputTable="t" and localDataDir="{text_files}"')
    with pytest.raises(UsageError, match=r"keepPartitionNum keeps the partitions of an inputTable"):
        run_llm(byzer, model_dir, tmp_path, f'keepPartitionNum="true" and localDataDir="{text_files}"')
    with pytest.raises(UsageError, match=r'inputTable parts has 3 partitions for 2 worker.*partitionNum="2"'):
        run_llm(byzer, model_dir, tmp_path, 'keepPartitionNum="true" and inputTable="parts"')
    assert not any(tmp_path.iterdir())  # no job folder was made
