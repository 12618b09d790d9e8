"""Checkpoint publication without Ray (docs/RELIABILITY.md): what a crash at each point of a save or a
prune leaves, and which checkpoint a restart then loads. A one-process gloo group stands in for the
workers; the engine writes files where DeepSpeed would. The real kill-during-save is in
tests/test_fault_workers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch.distributed as dist

from byzer_magic.runtime.worker import checkpoint


class FilesEngine:
    """What ``checkpoint`` uses of a DeepSpeed engine: files under ``<dir>/<tag>/``."""

    def __init__(self):
        self.loaded = None

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert not save_latest
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True)
        (folder / "mp_rank_00_model_states.pt").write_text(repr(client_state))

    def load_checkpoint(self, load_dir, tag):
        self.loaded = tag
        return load_dir, eval((Path(load_dir) / tag / "mp_rank_00_model_states.pt").read_text())


@pytest.fixture(scope="module", autouse=True)
def process_group(tmp_path_factory):
    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("pg") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def save(ckpt: Path, step: int, keep: int = 2) -> None:
    checkpoint.save(FilesEngine(), ckpt, step, {"step": step}, keep=keep)


def test_saves_publish_by_rename_and_keep_bounds_the_disk(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (3, 6, 9, 12):
        save(ckpt, step)
    assert sorted(os.listdir(ckpt)) == ["global_step12", "global_step9", "latest"]
    assert (ckpt / "latest").read_text() == "global_step12"
    engine = FilesEngine()
    assert checkpoint.load_latest(engine, ckpt) == {"step": 12} and engine.loaded == "global_step12"


def test_a_crash_mid_save_leaves_the_previous_checkpoint_and_is_cleaned_up(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3)
    # Killed while DeepSpeed wrote step 6: its files sit under the temporary tag.
    FilesEngine().save_checkpoint(ckpt, ".tmp-global_step6", {"step": 6}, save_latest=False)
    assert checkpoint.latest_tag(ckpt) == "global_step3"
    assert checkpoint.load_latest(FilesEngine(), ckpt) == {"step": 3}
    save(ckpt, 6)  # the restarted run saves step 6 again
    assert sorted(os.listdir(ckpt)) == ["global_step3", "global_step6", "latest"]


def test_a_crash_between_publish_and_latest_loads_the_newest_complete(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3)
    save(ckpt, 6)
    (ckpt / "latest").write_text("global_step3")  # rename done, `latest` not yet replaced
    assert checkpoint.latest_tag(ckpt) == "global_step3"  # complete, so still a right answer
    # Killed while writing `latest`: the new text sits in a temporary file, `latest` is the old one or
    # (the very first save) absent.
    (ckpt / "latest").unlink()
    (ckpt / ".latest.tmp-4242").write_text("global_step6")
    assert checkpoint.latest_tag(ckpt) == "global_step6"
    save(ckpt, 9)
    assert sorted(os.listdir(ckpt)) == ["global_step6", "global_step9", "latest"]


def test_latest_naming_a_missing_folder_falls_back_to_the_newest(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3)
    save(ckpt, 6)
    # A re-save of step 6 removed the old folder and crashed before publishing the new one.
    os.replace(ckpt / "global_step6", ckpt / ".del-global_step6")
    assert checkpoint.latest_tag(ckpt) == "global_step3"
    assert checkpoint.load_latest(FilesEngine(), ckpt) == {"step": 3}
    save(ckpt, 6)
    assert sorted(os.listdir(ckpt)) == ["global_step3", "global_step6", "latest"]


def test_a_crash_mid_prune_never_leaves_a_partial_checkpoint_under_its_name(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3)
    save(ckpt, 6)
    # The prune renames before it deletes: a crash mid-delete leaves a partial `.del-` folder only.
    os.replace(ckpt / "global_step3", ckpt / ".del-global_step3")
    (ckpt / ".del-global_step3" / "mp_rank_00_model_states.pt").unlink()
    assert checkpoint.published_steps(ckpt) == [6]
    save(ckpt, 9)
    assert sorted(os.listdir(ckpt)) == ["global_step6", "global_step9", "latest"]


def test_no_checkpoint_yet(tmp_path):
    assert checkpoint.latest_tag(tmp_path / "checkpoints") is None
    assert checkpoint.load_latest(FilesEngine(), tmp_path / "checkpoints") is None
