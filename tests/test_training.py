"""End to end on the real embedded Ray head with DeepSpeed on gloo, 2 CPU workers: the user document's
continued pretraining through the magic (detached, then found from another process), and its Python
API training a Baichuan from scratch under ZeRO-3. Tiny models, a tokenizer trained here on real text."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

from tests.support.tiny import make_tiny_llama_dir, tiny_model_config, train_sentencepiece

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    tokenizer = train_sentencepiece(root / "tok")
    model_dir = make_tiny_llama_dir(root / "Llama-2-tiny-hf", tokenizer)
    return {"tokenizer": tokenizer, "model_dir": model_dir, "jobs": root / "jobs"}


def _loss_fell(metrics) -> bool:
    losses = metrics["loss"].tolist()
    return np.mean(losses[-3:]) < np.mean(losses[:3])


def _export_reproduces_final_loss(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import byzer_magic.runtime.models  # noqa: F401  (registers Baichuan with the Auto classes)

    final = json.loads((model_dir.parent / "final_eval.json").read_text())
    batch = torch.from_numpy(np.load(model_dir.parent / final["batch"]))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        loss = model(input_ids=batch, labels=batch).loss.item()
    assert loss == pytest.approx(final["loss"], abs=1e-4)


def test_user_document_continued_pretraining_detached(byzer, text_files, assets, capsys):
    byzer(f"""
-- 加载收集到的文本数据
load text.`file://{text_files}/*`
where wholetext="true" as trainData;

select value as text,file from trainData  as newTrainData;
""")
    handle_or_widget = byzer(f"""
run newTrainData as TableRepartition.`` where partitionNum="2" and partitionCols="file" as finalTrainData;
!byzerllm setup sfft;
!byzerllm setup "num_gpus=2";
run command as LLM.`` where
-- 给训练起个名字
name="sfft-test-llama2-pretrain"
and localPathPrefix="{assets['jobs']}"
and pretrainedModelType="sfft/llama2"
-- 原始模型
and localModelDir="{assets['model_dir']}"
and detached="true"
and keepPartitionNum="true"
and inputTable="finalTrainData"
and outputTable="llama2_cn"
and model="command"
and deepspeedConfig='''{{"optimizer": {{"type": "AdamW", "params": {{"lr": 3e-3}}}}}}'''
and `sfft.int.max_length`="64"
and `sfft.int.steps_per_epoch`="12"
and `sfft.int.checkpoint_every`="5"
and `sfft.int.keep_checkpoints`="2"
and `sfft.bool.setup_nccl_socket_ifname_by_ip`="true"
;""")
    out = capsys.readouterr().out
    assert "CPU worker(s) with gloo" in out and "sfft-test-llama2-pretrain" in out
    assert handle_or_widget is not None

    # A new process (as a new kernel would) finds the job by name and waits for it.
    code = textwrap.dedent(f"""
        import byzer_magic
        job = byzer_magic.get_job("sfft-test-llama2-pretrain", jobs_dir={str(assets['jobs'])!r})
        print("STATUS", job.wait(timeout=900))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1000)
    assert "STATUS SUCCEEDED" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]

    import byzer_magic

    job = byzer_magic.get_job("sfft-test-llama2-pretrain", jobs_dir=assets["jobs"])
    metrics = job.metrics()
    assert metrics["step"].tolist() == list(range(1, 13))
    assert _loss_fell(metrics)
    assert sorted(p.name for p in job.checkpoint_dir.glob("global_step*")) == ["global_step10", "global_step12"]
    _export_reproduces_final_loss(job.model_dir)
    assert any(job.tensorboard_dir.iterdir())
    # The job's log has each step's line once (Ray Train's print patch would tee it a second time).
    assert re.findall(r"\] step (\d+)/12 ", job.logs()) == [str(step) for step in range(1, 13)]
    workers = job.workers()  # where each rank ran, as it recorded itself
    assert sorted(workers) == [0, 1] and all(w["submission_id"] == job.submission_id for w in workers.values())
    row = byzer("select name, status, steps, final_loss, eval_loss, tokens_trained, corpus_tokens, "
                "trained_share from llama2_cn as r;")
    assert row.iloc[0]["status"] == "SUCCEEDED" and row.iloc[0]["steps"] == 12
    assert row.iloc[0]["tokens_trained"] == 12 * 2 * 64 and row.iloc[0]["eval_loss"] > 0
    assert 0 < row.iloc[0]["trained_share"] <= 1 and row.iloc[0]["corpus_tokens"] > row.iloc[0]["tokens_trained"]
    # Resuming with another max_length would move the data position: refused, saying what changed.
    with pytest.raises(UsageError, match=r"max_length 64 -> 128 would repeat or skip data"):
        byzer(f"""run command as LLM.`` where name="sfft-test-llama2-pretrain" and resume="true"
and localPathPrefix="{assets['jobs']}" and `sfft.int.max_length`="128";""")


def test_python_api_baichuan_from_scratch_zero3(ray_cluster, assets, text_files, tmp_path):
    """... reporting to TensorBoard, MLflow (a SQLite store) and W&B (offline) from the job's rank 0."""
    from byzer_magic import (DEFAULT_CONFIG, BaiChuanConfig, BaiChuanForCausalLM, DeepSpeedTrain,
                             ParallelConfig, TrainArgs)

    ds_config = json.loads(DEFAULT_CONFIG)
    ds_config["zero_optimization"]["stage"] = 3
    ds_config["optimizer"]["params"]["lr"] = 3e-3
    config = tiny_model_config("sfft/baichuan")

    def get_model():
        return BaiChuanForCausalLM(BaiChuanConfig(**config))

    dst = DeepSpeedTrain(ParallelConfig(
        num_workers=2, get_model=get_model, ds_config=ds_config, name="baichuan-from-scratch",
        local_path_prefix=str(assets["jobs"]), setup_nccl_socket_ifname_by_ip=True,
        train_args=TrainArgs(tokenizer_path=str(assets["tokenizer"]), data_dir=str(text_files),
                             steps_per_epoch=10, max_length=64, report_to="tensorboard,mlflow,wandb",
                             mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")))
    result = dst.train()
    assert result.status == "SUCCEEDED" and result.steps == 10
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run((Path(result.model_dir).parent / "mlflow_run_id").read_text().strip())
    assert run.data.params["max_length"] == "64" and run.info.run_name == "baichuan-from-scratch"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 11))
    assert list((Path(result.model_dir).parent / "wandb").glob("offline-run-*/run-*.wandb"))
    assert _loss_fell(result.metrics)
    assert json.loads((Path(result.model_dir) / "config.json").read_text())["model_type"] == "baichuan"
    _export_reproduces_final_loss(Path(result.model_dir))
