"""Load (docs/RELIABILITY.md): five detached jobs submitted at once on the embedded head queue for its
CPU slots and data tasks rather than fail or deadlock, and all finish; afterwards none holds anything
and Ray's per-cluster helper actors exist once, not once per job."""
from __future__ import annotations

import uuid

import pytest

from tests.support.faults import alive_detached_actors, wait_released, worker_pids
from tests.support.tiny import make_tiny_llama_dir, stdlib_text_files, train_sentencepiece

pytestmark = pytest.mark.slow

JOBS, STEPS = 5, 3


def test_five_detached_jobs_at_once_all_finish(ray_cluster, tmp_path):
    from byzer_magic import DeepSpeedTrain, ParallelConfig, TrainArgs

    model_dir = make_tiny_llama_dir(tmp_path / "llama", train_sentencepiece(tmp_path / "tok"))
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(p.read_text() for p in stdlib_text_files(2)))
    tag = uuid.uuid4().hex[:6]
    names = [f"load-{i}-{tag}" for i in range(JOBS)]
    handles = [DeepSpeedTrain(ParallelConfig(
        num_workers=1, name=name, local_path_prefix=str(tmp_path / "jobs"),
        train_args=TrainArgs(model_path=str(model_dir), data_dir=str(text), steps_per_epoch=STEPS, max_length=32,
                             checkpoint_every=STEPS))).submit() for name in names]
    try:
        statuses = {h.name: h.wait(timeout=600) for h in handles}
        assert statuses == {name: "SUCCEEDED" for name in names}, {h.name: h.logs(tail=20) for h in handles}
        for handle in handles:
            assert handle.metrics()["step"].tolist() == list(range(1, STEPS + 1))
            assert (handle.model_dir / "config.json").exists()
            wait_released(handle, timeout=60)
        helpers = alive_detached_actors()
        assert all(helpers.count(c) == 1 for c in set(helpers)), helpers
        assert not any(worker_pids(handle) for handle in handles)
    finally:
        for handle in handles:
            if handle.status() in ("PENDING", "RUNNING"):
                handle.stop(timeout=30)
