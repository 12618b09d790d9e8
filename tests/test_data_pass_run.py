"""A real run of the data pass on the embedded Ray head (2 CPU workers, DeepSpeed on gloo): files of
very unequal size, two epochs, a held-out split, launched by the user document's Python block as
written (``DEFUALT_CONFIG``, ``ray.get([w.train.remote() for w in dst.workers])``)."""
from __future__ import annotations

import json

import pytest

from tests.support.tiny import stdlib_text_files, tiny_model_config, train_sentencepiece

pytestmark = pytest.mark.slow


def test_seed_python_block_trains_every_token_twice_with_held_out_loss(ray_cluster, tmp_path):
    import ray
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from byzer_magic import DEFUALT_CONFIG, DeepSpeedTrain, ParallelConfig, TrainArgs, get_job
    from byzer_magic.runtime.models import build_model

    data = tmp_path / "raw_data"
    data.mkdir()
    texts = [p.read_text() for p in stdlib_text_files(12)]
    (data / "big.txt").write_text("\n".join(texts[:3]))            # ~60 kB
    for i, text in enumerate(texts[3:]):                            # nine of ~150 bytes
        (data / f"small-{i}.txt").write_text(text[:150])
    tokenizer = train_sentencepiece(tmp_path / "tok")
    model_config = tiny_model_config("sfft/llama2", 512)

    dst = DeepSpeedTrain(ParallelConfig(
        num_workers=2,
        get_model=lambda: build_model("sfft/llama2", model_config),
        ds_config=json.loads(DEFUALT_CONFIG),
        setup_nccl_socket_ifname_by_ip=True,
        name="seed-python-block", local_path_prefix=str(tmp_path / "jobs"),
        train_args=TrainArgs(tokenizer_path=str(tokenizer), data_dir=str(data), max_length=64, epoches=2,
                             eval_ratio=0.2, eval_every=40)))
    results = ray.get([w.train.remote() for w in dst.workers])

    job = get_job("seed-python-block", jobs_dir=tmp_path / "jobs")
    layout, result = job.layout, results[0]
    assert all(r == result for r in results) and result["status"] == "SUCCEEDED"
    # planned == trained, over two full passes, and all but less than a global batch of each pass
    metrics = job.metrics()
    assert result["steps"] == layout.total_steps == 2 * layout.steps_per_epoch
    assert metrics["step"].tolist() == list(range(1, layout.total_steps + 1))
    assert set(metrics["epoch"]) == {0, 1}
    train_tokens = layout.corpus.train_tokens
    assert result["tokens_trained"] == layout.total_steps * layout.tokens_per_step
    assert 2 * (train_tokens - layout.tokens_per_step) < result["tokens_trained"] <= 2 * train_tokens
    assert result["trained_share"] >= 0.99 and result["corpus_tokens"] == layout.corpus.tokens
    # the schedule ends at the planned end: WarmupCosineLR down to cos_min_ratio x lr
    assert metrics["lr"].iloc[-1] == pytest.approx(0.1 * 3e-4, rel=0.05)
    # held-out loss every 40 steps and at the end: metrics, result, TensorBoard
    evals = metrics.dropna(subset=["eval_loss"])
    assert evals["step"].tolist() == [s for s in range(40, layout.total_steps, 40)] + [layout.total_steps]
    assert result["eval_loss"] == pytest.approx(evals["eval_loss"].iloc[-1])
    assert evals["eval_loss"].iloc[-1] < evals["eval_loss"].iloc[0]
    events = EventAccumulator(str(job.tensorboard_dir)).Reload()
    assert [e.step for e in events.Scalars("eval/loss")] == evals["step"].tolist()
    assert layout.corpus.eval_documents == 2
