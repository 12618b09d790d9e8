"""A failure the training code raises is not retried (driver/attempts.py): a loss that turns NaN
mid-run ends the job FAILED at once, with the step, and the checkpoints saved before stay. Real Ray
head, DeepSpeed on gloo, 2 CPU workers."""
from __future__ import annotations

import re

import pytest

from tests.support.tiny import stdlib_text_files, tiny_model_config, train_sentencepiece

pytestmark = pytest.mark.slow


def nan_after(calls: int):
    """A tiny Llama whose forward returns NaN from its ``calls``-th call on (the same on every rank)."""
    import torch

    from byzer_magic.runtime.models import build_model

    model = build_model("sfft/llama2", tiny_model_config("sfft/llama2", 512))
    seen = {"n": 0}

    def poison(_module, _inputs, output):
        seen["n"] += 1
        return output * float("nan") if seen["n"] >= calls and torch.is_grad_enabled() else output

    model.model.embed_tokens.register_forward_hook(poison)
    return model


@pytest.fixture(scope="module")
def disk_full_job(ray_cluster, tmp_path_factory):
    """The full-disk job, submitted (detached) before the NaN test so that the two overlap: checkpoints
    on a real 3 MiB tmpfs."""
    import gc
    import subprocess

    from byzer_magic import DeepSpeedTrain, ParallelConfig, TrainArgs
    from byzer_magic.runtime.models import build_model

    tmp_path = tmp_path_factory.mktemp("disk-full")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        yield None  # the test says why it cannot run
        return
    try:
        data = tmp_path / "data"
        data.mkdir()
        for path in stdlib_text_files(3):
            (data / path.name).write_text(path.read_text())
        tokenizer = train_sentencepiece(tmp_path / "tok")
        config = tiny_model_config("sfft/llama2", 512)
        dst = DeepSpeedTrain(ParallelConfig(
            num_workers=2, get_model=lambda: build_model("sfft/llama2", config), name="disk-full",
            local_path_prefix=str(tmp_path / "jobs"),
            train_args=TrainArgs(tokenizer_path=str(tokenizer), data_dir=str(data), max_length=64, steps_per_epoch=40,
                                 checkpoint_every=3, keep_checkpoints=50, checkpoint_saving_path=str(disk),
                                 eval_ratio=0.0)))
        yield dst.submit(), disk
    finally:
        gc.collect()
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def test_nan_loss_fails_at_once_without_a_restart(ray_cluster, tmp_path, disk_full_job):
    from byzer_magic import DeepSpeedTrain, ParallelConfig, TrainArgs
    from byzer_magic.errors import ByzerError

    data = tmp_path / "data"
    data.mkdir()
    for path in stdlib_text_files(3):
        (data / path.name).write_text(path.read_text())
    tokenizer = train_sentencepiece(tmp_path / "tok")
    dst = DeepSpeedTrain(ParallelConfig(
        num_workers=2, get_model=lambda: nan_after(9), name="goes-nan", local_path_prefix=str(tmp_path / "jobs"),
        train_args=TrainArgs(tokenizer_path=str(tokenizer), data_dir=str(data), max_length=64, steps_per_epoch=30,
                             checkpoint_every=4, eval_ratio=0.0, max_failures=3)))
    with pytest.raises(ByzerError, match=r"loss is not finite at step 9"):
        dst.train()
    handle = dst.submitted()
    result = handle.files.read_json("result.json")
    assert result["status"] == "FAILED" and "loss is not finite at step 9" in result["error"]
    logs = handle.logs()
    assert "restarting from the last checkpoint" not in logs      # not retried
    assert logs.count("step 1/30 ") == 1                           # trained once
    assert handle.last_checkpoint.name == "global_step8"          # the last checkpoint before the NaN
    assert handle.metrics()["step"].tolist() == list(range(1, 9))


def test_a_full_disk_fails_once_and_keeps_the_earlier_checkpoint(disk_full_job):
    """The save that no longer fits ends the job at once (no restart retraining up to the same save),
    naming the intact checkpoint before it."""
    from byzer_magic.runtime.worker.checkpoint import latest_tag

    if disk_full_job is None:
        pytest.skip("cannot mount a tmpfs here")
    handle, disk = disk_full_job
    assert handle.wait(timeout=900) == "FAILED"
    error = handle.files.read_json("result.json")["error"]
    assert re.search(r"disk full|No space left", error), error
    logs = handle.logs()
    assert "restarting from the last checkpoint" not in logs and logs.count("step 1/40 ") == 1
    tag = latest_tag(disk / "disk-full")
    assert tag is not None and tag in error
