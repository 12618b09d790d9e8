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


@pytest.fixture(autouse=True)
def _group(gloo_group):
    """The session's one gloo group (tests/conftest.py)."""


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


# -- verified checkpoints (#14): manifests, damaged checkpoints passed over, good ones kept ---------------
def shard(ckpt: Path, step: int) -> Path:
    return ckpt / f"global_step{step}" / "mp_rank_00_model_states.pt"


def test_each_checkpoint_has_a_manifest_of_sizes_and_checksums(tmp_path):
    ckpt = tmp_path / "checkpoints"
    checkpoint.save(FilesEngine(), ckpt, 3, {"step": 3}, keep=2, good=True)
    manifest = checkpoint.read_manifest(ckpt / "global_step3")
    assert manifest["step"] == 3 and manifest["good"] is True
    assert manifest["files"] == {"mp_rank_00_model_states.pt": checkpoint.file_digest(shard(ckpt, 3))}
    assert manifest["bytes"] == shard(ckpt, 3).stat().st_size
    assert checkpoint.check_intact(ckpt / "global_step3", deep=True) is None


def test_a_zero_byte_shard_is_passed_over_and_the_job_log_says_so(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3, keep=3)
    save(ckpt, 6, keep=3)
    size = shard(ckpt, 6).stat().st_size
    shard(ckpt, 6).write_bytes(b"")  # `latest` names a checkpoint with a 0-byte shard
    said = []
    assert checkpoint.latest_tag(ckpt, say=said.append) == "global_step3"
    assert said == [f"checkpoint global_step6 in {ckpt} is damaged (mp_rank_00_model_states.pt is 0 bytes, "
                    f"{size} expected): passing over it"]
    engine = FilesEngine()
    assert checkpoint.load_latest(engine, ckpt) == {"step": 3} and engine.loaded == "global_step3"
    assert (f"checkpoint global_step6 in {ckpt} is damaged (mp_rank_00_model_states.pt is 0 bytes, {size} "
            f"expected): resuming from global_step3, the newest intact checkpoint") in capsys.readouterr().out


def test_an_empty_or_unfinished_step_folder_is_not_a_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3)
    (ckpt / "global_step9").mkdir()  # an empty global_step9/ that `latest` names
    (ckpt / "latest").write_text("global_step9")
    assert checkpoint.latest_tag(ckpt) == "global_step3"
    assert checkpoint.intact_steps(ckpt) == [3] and checkpoint.published_steps(ckpt) == [3, 9]
    (ckpt / "global_step12").mkdir()
    (ckpt / "global_step12" / "mp_rank_00_model_states.pt").write_text("{}")  # files but no manifest
    assert checkpoint.check_intact(ckpt / "global_step12") == "it has no manifest (an unfinished or foreign save)"
    assert checkpoint.load_latest(FilesEngine(), ckpt) == {"step": 3}


def test_a_changed_byte_is_caught_by_the_checksum_when_loading(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3, keep=3)
    save(ckpt, 6, keep=3)
    data = bytearray(shard(ckpt, 6).read_bytes())
    data[1] ^= 0x20  # same size, other content (a torn or bit-rotted write)
    shard(ckpt, 6).write_bytes(bytes(data))
    assert checkpoint.latest_tag(ckpt) == "global_step6"  # the quick check (sizes) cannot see it
    assert checkpoint.load_latest(FilesEngine(), ckpt) == {"step": 3}
    assert "mp_rank_00_model_states.pt does not match its checksum" in capsys.readouterr().out


def test_no_intact_checkpoint_starts_from_scratch_and_says_so(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3)
    (ckpt / "global_step3" / checkpoint.MANIFEST).write_text("{not json")
    assert checkpoint.load_latest(FilesEngine(), ckpt) is None
    assert "no intact checkpoint" in capsys.readouterr().out


def test_rotation_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints"
    checkpoint.save(FilesEngine(), ckpt, 3, {"step": 3}, keep=2, good=True)
    for step in (6, 9, 12):  # saved at steps whose loss was not checked (or was not finite)
        checkpoint.save(FilesEngine(), ckpt, step, {"step": step}, keep=2, good=False)
    assert checkpoint.published_steps(ckpt) == [3, 9, 12]
    checkpoint.save(FilesEngine(), ckpt, 15, {"step": 15}, keep=2, good=True)
    assert checkpoint.published_steps(ckpt) == [12, 15]


def test_a_failed_write_is_one_clear_deterministic_error_and_the_previous_checkpoint_stays(tmp_path):
    import errno

    from byzer_magic.errors import CheckpointWriteError, DeterministicFailure

    class FailingEngine(FilesEngine):
        def __init__(self, code):
            super().__init__()
            self.code = code

        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            (Path(save_dir) / tag).mkdir(parents=True)
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_text("half")
            raise OSError(self.code, os.strerror(self.code))

    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3)
    with pytest.raises(CheckpointWriteError) as info:
        checkpoint.save(FailingEngine(errno.ENOSPC), ckpt, 6, {"step": 6}, keep=2)
    assert str(info.value) == (f"disk full writing checkpoint global_step6 in {ckpt}; the previous checkpoint "
                               f"global_step3 is intact")
    assert isinstance(info.value, DeterministicFailure)
    with pytest.raises(CheckpointWriteError, match=r"^could not write checkpoint global_step6 in .* "
                                                   r"\(PermissionError: Permission denied\); the previous "
                                                   r"checkpoint global_step3 is intact$"):
        checkpoint.save(FailingEngine(errno.EACCES), ckpt, 6, {"step": 6}, keep=2)
    assert sorted(os.listdir(ckpt)) == ["global_step3", "latest"]  # the half-written save is gone
    assert checkpoint.load_latest(FilesEngine(), ckpt) == {"step": 3}


# -- a real full disk: DeepSpeed on gloo writing into a size-limited tmpfs ------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 5 MiB tmpfs (root can mount one); else the test is skipped (the injected ENOSPC above stays)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    import gc

    gc.collect()  # a failed torch.save may still hold its file open
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _engine(seed: int):
    import deepspeed
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Linear(512, 512)  # ~1 MiB of weights, ~3 MiB with AdamW's state: one checkpoint fits
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}})
    return engine


def test_disk_full_on_a_real_small_filesystem(small_disk):
    import torch

    from byzer_magic.errors import CheckpointWriteError

    ckpt = small_disk / "checkpoints"
    engine = _engine(0)
    x = torch.ones(1, 512)
    saved = None
    for step in (1, 2):
        engine.backward(engine(x).sum())
        engine.step()
        if step == 1:
            checkpoint.save(engine, ckpt, 1, {"step": 1}, keep=3, good=True)
            saved = {k: v.clone() for k, v in engine.module.state_dict().items()}
    with pytest.raises(CheckpointWriteError) as info:
        checkpoint.save(engine, ckpt, 2, {"step": 2}, keep=3)
    assert str(info.value).startswith(f"disk full writing checkpoint global_step2 in {ckpt}")
    assert str(info.value).endswith("; the previous checkpoint global_step1 is intact")
    assert sorted(os.listdir(ckpt)) == ["global_step1", "latest"]
    fresh = _engine(1)
    assert checkpoint.load_latest(fresh, ckpt)["step"] == 1
    for key, value in fresh.module.state_dict().items():
        assert torch.equal(value, saved[key])


def test_disk_full_at_the_first_save_on_a_real_small_filesystem(small_disk):
    import subprocess

    import torch

    from byzer_magic.errors import CheckpointWriteError

    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=4"], check=True, capture_output=True)
    ckpt = small_disk / "checkpoints"
    engine = _engine(0)
    engine.backward(engine(torch.ones(1, 512)).sum())
    engine.step()
    with pytest.raises(CheckpointWriteError, match=r"^disk full writing checkpoint global_step1 in .*; there is "
                                                   r"no earlier checkpoint$"):
        checkpoint.save(engine, ckpt, 1, {"step": 1}, keep=3)
    assert os.listdir(ckpt) == [] and checkpoint.latest_tag(ckpt) is None


# -- two ranks: each verifies its share, all agree, one rank's failed write fails every rank -----------------
class RankEngine(FilesEngine):
    """Rank 0 writes the model states, every rank its optimizer shard (as ZeRO does)."""

    def __init__(self, fail_rank: int | None = None):
        super().__init__()
        self.fail_rank = fail_rank

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        rank = dist.get_rank()
        folder = Path(save_dir) / tag
        if rank == 0:
            folder.mkdir(parents=True)
            (folder / "mp_rank_00_model_states.pt").write_text(repr(client_state))
        dist.barrier()
        if rank == self.fail_rank:
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        (folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_text(f"rank {rank} " * 100)


def _two_ranks(rank: int, store: str, ckpt: str, out: str) -> None:
    import json

    from byzer_magic.errors import CheckpointWriteError

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    ckpt_dir, said = Path(ckpt), []
    record = {}
    checkpoint.save(RankEngine(), ckpt_dir, 3, {"step": 3}, keep=3, good=True)
    checkpoint.save(RankEngine(), ckpt_dir, 6, {"step": 6}, keep=3, good=True)
    record["files"] = sorted(checkpoint.read_manifest(ckpt_dir / "global_step6")["files"])
    dist.barrier()
    if rank == 0:  # rank 1's shard of step 6 is damaged; only rank 1 reads it back
        (ckpt_dir / "global_step6" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_text("x" * 700)  # same size: only the checksum shows it
    dist.barrier()
    record["loaded"] = checkpoint.load_latest(RankEngine(), ckpt_dir, say=said.append)
    record["said"] = said
    try:
        checkpoint.save(RankEngine(fail_rank=1), ckpt_dir, 9, {"step": 9}, keep=3)
    except CheckpointWriteError as err:
        record["error"] = str(err)
    dist.barrier()
    record["left"] = sorted(os.listdir(ckpt_dir))
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def test_two_ranks_verify_their_shares_and_fail_together(tmp_path):
    import json

    import torch.multiprocessing as mp

    ckpt = tmp_path / "checkpoints"
    mp.start_processes(_two_ranks, args=(str(tmp_path / "store2"), str(ckpt), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["files"] == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                 "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert [r["loaded"] for r in ranks] == [{"step": 3}, {"step": 3}]  # both fell back, together
    assert ranks[0]["said"] and "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its checksum" in \
        ranks[0]["said"][0] and ranks[1]["said"] == []  # rank 0 says it, once
    expected = f"disk full writing checkpoint global_step9 in {ckpt}; the previous checkpoint global_step6 is intact"
    assert [r.get("error") for r in ranks] == [expected, expected]
    assert ranks[0]["left"] == ["global_step3", "global_step6", "latest"]


def test_the_loaded_tag_is_returned_with_its_state(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save(ckpt, 3, keep=3)
    save(ckpt, 6, keep=3)
    shard(ckpt, 6).write_bytes(b"")
    assert checkpoint.load_newest_intact(FilesEngine(), ckpt, say=lambda _: None) == ("global_step3", {"step": 3})
    assert checkpoint.load_newest_intact(FilesEngine(), tmp_path / "none") == (None, None)


def _zero2_ranks(rank: int, store: str, ckpt: str, out: str) -> None:
    import json

    import deepspeed
    import torch

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29535", RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2},
              "zero_allow_untested_optimizer": True,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}

    def engine(seed):
        torch.manual_seed(seed)
        model = torch.nn.Linear(64, 64)
        return deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)[0]

    ckpt_dir, first = Path(ckpt), engine(0)
    weights = {}
    for step in (1, 2):
        first.backward(first(torch.full((1, 64), float(rank + step))).sum())
        first.step()
        checkpoint.save(first, ckpt_dir, step, {"step": step}, keep=3, good=True)
        weights[step] = [p.detach().clone() for p in first.module.parameters()]
    files = sorted(checkpoint.read_manifest(ckpt_dir / "global_step2")["files"])
    dist.barrier()
    if rank == 0:
        shard_file = next(n for n in files if "optim_states" in n and "rank_1" in n)
        path = ckpt_dir / "global_step2" / shard_file
        path.write_bytes(b"\0" * path.stat().st_size)  # same size, other content
    dist.barrier()
    fresh = engine(1)
    tag, state = checkpoint.load_newest_intact(fresh, ckpt_dir, say=lambda _: None)
    same = all(torch.equal(a, b) for a, b in zip(fresh.module.parameters(), weights[1]))
    Path(out, f"z{rank}.json").write_text(json.dumps({"files": files, "tag": tag, "state": state, "same": same}))
    dist.destroy_process_group()


@pytest.mark.slow  # two processes that import DeepSpeed: minutes on a busy 2-core machine
def test_zero2_on_two_ranks_falls_back_past_a_damaged_shard(tmp_path):
    """Real DeepSpeed ZeRO-2 on two gloo processes: each rank's optimizer shard is in the manifest; a shard
    changed in place is found by the rank that verifies it, and both ranks load the previous checkpoint."""
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_zero2_ranks, args=(str(tmp_path / "store3"), str(tmp_path / "ck"), str(tmp_path)),
                       nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"z{r}.json").read_text()) for r in (0, 1)]
    assert sum("optim_states" in n for n in ranks[0]["files"]) == 2 and ranks[0]["files"] == ranks[1]["files"]
    assert [(r["tag"], r["state"]["step"], r["same"]) for r in ranks] == [("global_step1", 1, True)] * 2
