"""Fault tests on the real embedded Ray head with DeepSpeed on gloo, 2 CPU workers (docs/RELIABILITY.md):
a worker killed mid-run, the workers killed while they save a checkpoint, a detached job stopped
through the magic and resumed, a blocking run interrupted.

Every run trains the same tiny LLaMA on the same token cache with the same seed, and on the CPU the
arithmetic is deterministic: whatever happened to a run, each of its steps must have the loss of the
same step of an unbroken run. That checks at once that no step was lost or repeated, that the data
position was restored (a skipped or repeated micro-batch changes every later loss), and that the
weights, optimizer and lr schedule came back from the checkpoint.

The runs go at once (the magic's run in the foreground, the others in threads) so that the module
costs about two runs' wall time rather than six.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support.faults import (all_worker_pids, alive_detached_actors, checkpoint_state, freeze, group_of,
                                  held_by_job, signal_all, thaw, wait_for, wait_released, worker_pids)
from tests.support.tiny import make_tiny_llama_dir, stdlib_text_files, train_sentencepiece

pytestmark = pytest.mark.slow

STEPS, EVERY, KEEP = 12, 3, 2
TRAIN = {"steps_per_epoch": STEPS, "max_length": 32, "checkpoint_every": EVERY, "keep_checkpoints": KEEP}
DS_CONFIG = {"optimizer": {"type": "AdamW", "params": {"lr": 3e-3}}}
RUN_TIMEOUT = 900  # a busy 2-core CI machine runs a tiny job in 1-6 minutes


@dataclass
class Setup:
    jobs: Path
    model_dir: Path
    text: Path
    tokens: Path
    tag: str  # makes names unique per session: a kept test head remembers every submission id

    def name(self, scenario: str) -> str:
        return f"rel-{scenario}-{self.tag}"

    def seed_tokens(self, name: str) -> None:
        """Give the job the shared token cache (the job reuses a cache it finds, as a resume does):
        every run then trains on exactly the same sequences."""
        job_dir = self.jobs / name
        job_dir.mkdir(mode=0o700, parents=True)
        shutil.copytree(self.tokens, job_dir / "tokens")


def _config(setup: Setup, name: str, **train):
    from byzer_magic import ParallelConfig, TrainArgs

    return ParallelConfig(num_workers=2, name=name, local_path_prefix=str(setup.jobs), ds_config=DS_CONFIG,
                          train_args=TrainArgs(model_path=str(setup.model_dir), data_dir=str(setup.text),
                                               **{**TRAIN, **train}))


def _submit(setup: Setup, scenario: str, **train):
    from byzer_magic import DeepSpeedTrain

    name = setup.name(scenario)
    setup.seed_tokens(name)
    return DeepSpeedTrain(_config(setup, name, **train)).submit()


def _step(tag: str) -> int:
    return int(tag.removeprefix("global_step"))


# -- the runs -----------------------------------------------------------------------------------------

def run_unbroken(setup: Setup) -> dict:
    handle = _submit(setup, "unbroken")
    return {"status": handle.wait(timeout=RUN_TIMEOUT), "metrics": handle.metrics()}


def run_worker_killed(setup: Setup) -> dict:
    """Kill rank 1 by pid once a checkpoint exists; Ray Train restarts the group (max_failures=3)."""
    handle = _submit(setup, "worker-kill")
    pids = group_of(handle, 2, RUN_TIMEOUT)
    wait_for(lambda: handle.last_checkpoint, RUN_TIMEOUT, poll=0.02, what="the first checkpoint")
    os.kill(pids[1], signal.SIGKILL)
    time.sleep(1)  # rank 0 cannot publish another checkpoint without rank 1: this is the one to resume
    restart_from = handle.last_checkpoint.name
    status = handle.wait(timeout=RUN_TIMEOUT)
    return {"status": status, "killed": pids, "restart_from": restart_from, "metrics": handle.metrics(),
            "logs": handle.logs(), "groups": all_worker_pids(handle), "released": wait_released(handle),
            "checkpoint_dir": handle.checkpoint_dir, "checkpoints": checkpoint_state(handle.checkpoint_dir)}


def _save_in_progress(ckpt_dir: Path) -> str | None:
    """The ``.tmp-global_step<N>`` folder of a save under way, once an earlier checkpoint exists."""
    try:
        if not (ckpt_dir / "latest").exists():
            return None
        return next((e.name for e in os.scandir(ckpt_dir) if e.name.startswith(".tmp-global_step")), None)
    except FileNotFoundError:
        return None


def run_killed_while_saving(setup: Setup) -> dict:
    """SIGKILL both workers while they write a checkpoint (max_failures=0: the job fails), then resume.

    A poll sees DeepSpeed create ``.tmp-global_step<N>`` (a save after the first checkpoint); rank 0 is
    frozen at once (it is the one that publishes, after a barrier that waits for every rank's files),
    then both are killed. A save is a short window: should the job end without the poll catching one,
    or the save finish before the kill, the scenario starts again with a new job (3 tries at most)."""
    from byzer_magic.runtime.kernel.resume import resume

    out = {"attempts": 0, "saving": None, "at_kill": {"entries": [], "latest": None}}
    for attempt in range(3):
        out["attempts"] += 1
        handle = _submit(setup, f"save-kill{attempt}", max_failures=0)
        pids = group_of(handle, 2, RUN_TIMEOUT)
        ended = handle.job_dir / "result.json"
        saving = wait_for(lambda: _save_in_progress(handle.checkpoint_dir) or ended.exists(), RUN_TIMEOUT,
                          poll=0.001, what="a save under way or the job's end")
        if saving is True:
            continue  # the job ended first
        freeze([pids[0]])
        signal_all(pids.values(), signal.SIGKILL)
        on_disk = checkpoint_state(handle.checkpoint_dir)
        out.update(previous=on_disk["latest"], saving=saving, at_kill=on_disk,
                   status=handle.wait(timeout=RUN_TIMEOUT))
        if saving in on_disk["entries"] and saving.removeprefix(".tmp-") not in on_disk["entries"]:
            break  # killed mid-save
    else:
        return out  # never killed mid-save: the test says so
    out["released"] = wait_released(handle)  # a failed job frees its actors, placement group and processes
    out["last_checkpoint"] = handle.last_checkpoint.name
    handle = resume(handle.name, local_path_prefix=str(setup.jobs))
    out.update(resumed_from=handle.spec.job.resumed_from, status_resumed=handle.wait(timeout=RUN_TIMEOUT),
               metrics=handle.metrics(), final=checkpoint_state(handle.checkpoint_dir), logs=handle.logs())
    return out


def run_interrupted(setup: Setup) -> dict:
    """A blocking ``train()`` interrupted (KeyboardInterrupt from its progress callback, as Ctrl-C or the
    notebook's stop button raise it) while its workers train; the run is long so it cannot end first."""
    from byzer_magic import DeepSpeedTrain

    name = setup.name("interrupt")
    setup.seed_tokens(name)
    seen = {}

    def progress(handle):
        if len(handle.metrics()) and len(pids := worker_pids(handle)) == 2:
            seen.update(handle=handle, pids=pids)
            raise KeyboardInterrupt

    try:
        DeepSpeedTrain(_config(setup, name, steps_per_epoch=500, checkpoint_every=500)).train(progress=progress)
    except KeyboardInterrupt:
        seen["interrupted"] = True
    handle = seen["handle"]
    # stop() has returned: Ray must already show nothing held; the processes get a moment to exit.
    held_at_return = held_by_job(handle.ray_job_id())
    return {**seen, "status": handle.status(), "held_at_return": held_at_return,
            "released": wait_released(handle, timeout=30)}


def thaw_once_ended(handle, pids, timeout: float = 120) -> None:
    """Let frozen workers run again once Ray has ended their job's driver (Ray then kills them)."""
    deadline = time.time() + timeout
    while handle._ray_status() not in ("STOPPED", "FAILED", "SUCCEEDED") and time.time() < deadline:
        time.sleep(0.2)
    thaw(pids)


# -- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(ray_cluster, tmp_path_factory) -> Setup:
    import ray.data

    from byzer_magic.runtime.driver.tokenise import build_store

    root = tmp_path_factory.mktemp("faults")
    tokenizer = train_sentencepiece(root / "tok")
    model_dir = make_tiny_llama_dir(root / "llama", tokenizer)
    text = root / "corpus.txt"
    text.write_text("\n".join(p.read_text() for p in stdlib_text_files(4)))
    tokens = root / "tokens"
    build_store(lambda: ray.data.from_items([{"text": text.read_text()}]), tokens, tokenizer_path=str(tokenizer),
                text_column="text", by_partition=False)
    return Setup(jobs=root / "jobs", model_dir=model_dir, text=text, tokens=tokens, tag=uuid.uuid4().hex[:6])


@pytest.fixture(scope="module")
def runs(setup):
    """The background runs, started together; each test waits for the one it checks."""
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fault-run")
    futures = {fn.__name__.removeprefix("run_"): pool.submit(fn, setup)
               for fn in (run_unbroken, run_worker_killed, run_killed_while_saving, run_interrupted)}
    yield futures
    for future in futures.values():
        future.cancel()
    pool.shutdown(wait=False)
    _stop_leftover_jobs(setup)


def _stop_leftover_jobs(setup: Setup) -> None:
    """A failed test must not leave its job training on the session's head."""
    from byzer_magic.runtime.kernel.jobs import list_jobs

    for handle in list_jobs(setup.jobs):
        if handle.status() in ("PENDING", "RUNNING"):
            handle.stop(timeout=30)


def _result(runs, name: str) -> dict:
    return runs[name].result(timeout=3 * RUN_TIMEOUT)


def assert_same_losses(metrics, reference) -> None:
    """Steps 1..STEPS once each, and each step's loss equal to the unbroken run's."""
    assert metrics["step"].tolist() == list(range(1, STEPS + 1))
    np.testing.assert_allclose(metrics["loss"].to_numpy(), reference["loss"].to_numpy(), rtol=1e-5, atol=1e-6)


def _tensorboard_steps(tb_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


# -- the tests ---------------------------------------------------------------------------------------

def test_stop_through_the_magic_then_resume_past_a_damaged_checkpoint(byzer, shell, setup, runs, capsys):
    """While the job runs, a second `resume="true"` of it is refused, naming the running job. %byzerllm stop
    mid-run frees the job's workers. The checkpoint it stopped at is then damaged (a shard cut short):
    `resume="true"` says so and continues from the newest intact checkpoint (or the start when there is
    none), in the same metrics file and TensorBoard run, every loss equal to the unbroken run's."""
    from IPython.core.error import UsageError

    name = setup.name("stop-resume")
    setup.seed_tokens(name)
    common = f'name="{name}" and localPathPrefix="{setup.jobs}"'
    byzer(f"""
!byzerllm setup "num_gpus=2";
run command as LLM.`` where {common}
and pretrainedModelType="sfft/llama2" and localModelDir="{setup.model_dir}" and localDataDir="{setup.text}"
and detached="true"
and deepspeedConfig='''{json.dumps(DS_CONFIG)}'''
and `sfft.int.max_length`="32" and `sfft.int.steps_per_epoch`="{STEPS}"
and `sfft.int.checkpoint_every`="{EVERY}" and `sfft.int.keep_checkpoints`="{KEEP}";""")
    from byzer_magic.runtime.kernel.jobs import JobHandle

    handle = JobHandle(name, setup.jobs / name)
    pids = group_of(handle, 2, RUN_TIMEOUT)
    wait_for(lambda: handle.last_checkpoint, RUN_TIMEOUT, poll=0.02, what="the first checkpoint")
    # Freeze the workers (as a hung collective would) so that the stop lands mid-run on any machine.
    freeze(pids.values())
    thawer = threading.Thread(target=thaw_once_ended, args=(handle, list(pids.values())))
    thawer.start()
    with pytest.raises(UsageError, match=rf"job {name} is still running: stop it first"):
        byzer(f"""run command as LLM.`` where {common} and resume="true" and detached="true";""")
    capsys.readouterr()
    shell.run_line_magic("byzerllm", f"stop {name}")
    thawer.join()
    assert f"job {name}: STOPPED" in capsys.readouterr().out
    stopped_at = handle.last_checkpoint.name  # what a resume loads (`latest` may not be written yet)
    done = handle.metrics()["step"].tolist()
    assert done and done[-1] < STEPS and handle.status() == "STOPPED"
    wait_released(handle, timeout=30)
    older = sorted((e for e in checkpoint_state(handle.checkpoint_dir)["entries"]
                    if e.startswith("global_step") and _step(e) < _step(stopped_at)), key=_step)
    shard = max((p for p in (handle.checkpoint_dir / stopped_at).rglob("*.pt")), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)  # a shard cut short, as a full disk or a lost node leaves it
    fallback = older[-1] if older else None

    capsys.readouterr()
    result = byzer(f"""run command as LLM.`` where {common} and resume="true" and detached="false";""")
    said = capsys.readouterr().out
    assert result.status == "SUCCEEDED" and result.steps == STEPS
    assert f"checkpoint {stopped_at} in {handle.checkpoint_dir} is damaged" in said, said
    handle = JobHandle(name, setup.jobs / name)
    assert handle.submission_id == f"{name}-r1"
    if fallback:
        assert handle.spec.job.resumed_from.endswith(fallback)
        assert f"resumed from {handle.checkpoint_dir / fallback} at step {_step(fallback)}" in handle.logs()
    else:  # the damaged one was the only checkpoint: the job trains again from the start
        assert handle.spec.job.resumed_from is None
    reference = _result(runs, "unbroken")
    assert reference["status"] == "SUCCEEDED"
    assert_same_losses(result.metrics, reference["metrics"])
    # The resumed run rewrote TensorBoard's steps after the checkpoint (purge_step), not appended twice.
    assert not [e for e in checkpoint_state(handle.checkpoint_dir)["entries"] if e.startswith(".")]
    tb = _tensorboard_steps(handle.tensorboard_dir)
    assert [s for s, _ in tb] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([v for _, v in tb], result.metrics["loss"].to_numpy(), rtol=1e-5)


def test_worker_killed_mid_run_restarts_from_the_checkpoint(runs):
    run, reference = _result(runs, "worker_killed"), _result(runs, "unbroken")
    assert run["status"] == "SUCCEEDED", run["logs"][-3000:]
    restart = run["restart_from"]
    assert f"resumed from {run['checkpoint_dir']}/{restart} at step {_step(restart)}" in run["logs"]
    assert len(run["groups"]) == 4, "one group of 2 workers, then its replacement"
    assert_same_losses(run["metrics"], reference["metrics"])
    assert run["checkpoints"]["latest"] == f"global_step{STEPS}"


def test_killed_while_saving_keeps_the_previous_checkpoint(runs):
    run, reference = _result(runs, "killed_while_saving"), _result(runs, "unbroken")
    at_kill, previous, saving = run["at_kill"], run["previous"], run["saving"]
    assert saving in at_kill["entries"], f"the kill never landed during a save in {run['attempts']} tries"
    # The half-written checkpoint was never published: `latest` still names the complete one ...
    assert at_kill["latest"] == previous and saving.removeprefix(".tmp-") not in at_kill["entries"]
    assert run["status"] == "FAILED" and run["last_checkpoint"] == previous
    # ... which loads: the resumed job starts there and ends with every step's loss right.
    assert run["resumed_from"].endswith(previous) and run["status_resumed"] == "SUCCEEDED", run["logs"][-3000:]
    assert f"{previous} at step {_step(previous)}" in run["logs"]
    assert_same_losses(run["metrics"], reference["metrics"])
    # keep_checkpoints bounds the disk: the last KEEP checkpoints, no temporary folder left.
    final = run["final"]
    assert final["latest"] == f"global_step{STEPS}"
    assert {e for e in final["entries"] if e.startswith(("global_step", ".tmp", ".del"))} == {
        f"global_step{STEPS - EVERY}", f"global_step{STEPS}"}


def test_interrupting_a_blocking_run_stops_its_workers(runs):
    run = _result(runs, "interrupted")
    assert run["interrupted"] and len(run["pids"]) == 2
    assert run["status"] == "STOPPED"
    # stop() returned only once Ray had freed the job's actors and placement group.
    assert run["held_at_return"] == {"actors": [], "placement_groups": []}


def test_detached_helpers_do_not_pile_up(runs):
    for future in runs.values():  # after every run of the module
        future.exception(timeout=3 * RUN_TIMEOUT)
    helpers = alive_detached_actors()
    assert all(helpers.count(c) == 1 for c in set(helpers)), helpers
