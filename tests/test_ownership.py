"""runtime/ownership.py with real processes: one owner per job folder (no Ray needed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import ownership

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


DRIVER = """
import sys, time
from byzer_magic.runtime.ownership import JobLease
with JobLease(sys.argv[1], owner=sys.argv[2], interval=0.2):
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
print("released", flush=True)
"""


def test_a_running_drivers_lease_refuses_a_second_submit_until_it_dies(tmp_path):
    job = tmp_path / "jobs" / "demo"
    job.mkdir(parents=True)
    driver = _python(DRIVER, str(job), "demo-r1", "60")
    try:
        assert driver.stdout.readline().strip() == "holding"
        assert ownership.active_owner(job) == "demo-r1"
        beat = ownership.read_owner(job)["heartbeat"]
        _wait_for(lambda: ownership.read_owner(job)["heartbeat"] > beat)  # the thread refreshes it
        with pytest.raises(ownership.JobFolderBusy) as info:
            with ownership.job_lock(job):
                ownership.claim(job, "demo-r2")
        message = str(info.value)
        assert message.startswith(f"job demo is running as demo-r1 (driver pid {driver.pid} on ")
        assert "%byzerllm stop demo" in message and isinstance(info.value, ByzerError)
        # A second driver (another head) cannot take the folder either.
        with pytest.raises(ownership.JobFolderBusy, match="running as demo-r1"):
            ownership.JobLease(job, "demo-r2").acquire()
        driver.send_signal(signal.SIGKILL)  # the driver dies without releasing: its pid is gone
        driver.wait()
        assert ownership.active_owner(job) is None  # at once: its heartbeat is fresh, but its pid is gone
        with ownership.job_lock(job):
            ownership.claim(job, "demo-r2")
        assert ownership.active_owner(job) == "demo-r2"
    finally:
        driver.kill()
        driver.wait()


def test_a_lease_is_released_when_the_driver_ends(tmp_path):
    job = tmp_path / "demo"
    job.mkdir()
    driver = _python(DRIVER, str(job), "demo", "0.3")
    out, err = driver.communicate(timeout=30)
    assert out.split() == ["holding", "released"], err
    assert ownership.read_owner(job)["state"] == "released" and ownership.active_owner(job) is None


SUBMIT = """
import sys, time
from byzer_magic.errors import ByzerError
from byzer_magic.runtime.ownership import claim, job_lock
start = float(sys.argv[3])
while time.time() < start:  # both processes race from the same instant
    time.sleep(0.001)
try:
    with job_lock(sys.argv[1]):
        claim(sys.argv[1], sys.argv[2])
        time.sleep(0.5)  # what submit does under the lock: write job.json, submit the Ray job
    print("won", flush=True)
except ByzerError as err:
    print("lost:", err, flush=True)
"""


def test_a_double_submit_has_one_winner_and_the_loser_is_told_which_job_runs(tmp_path):
    job = tmp_path / "jobs" / "race"
    job.mkdir(parents=True)
    start = str(time.time() + 2.0)
    procs = [_python(SUBMIT, str(job), owner, start) for owner in ("race", "race-other")]
    outs = [p.communicate(timeout=60) for p in procs]
    lines = sorted(out.strip() for out, _ in outs)
    assert lines[1] == "won" and lines[0].startswith("lost: job race was submitted"), outs
    winner = ownership.active_owner(job)
    assert winner in ("race", "race-other") and f"as {winner} and has not started yet" in lines[0]


def test_the_driver_takes_over_its_own_claim_and_a_stale_foreign_owner(tmp_path):
    job = tmp_path / "demo"
    job.mkdir()
    with ownership.job_lock(job):
        ownership.claim(job, "demo-r1")
    with ownership.JobLease(job, "demo-r1", interval=0.1) as lease:  # the submitted job's driver
        assert ownership.read_owner(job)["state"] == "running"
        lease.check()
    # A driver on another machine whose heartbeat stopped a minute ago is no owner any more.
    record = {"owner": "demo-r2", "state": "running", "host": "elsewhere", "pid": 1,
              "heartbeat": time.time() - 60, "since": time.time() - 600}
    (job / ownership.OWNER_FILE).write_text(json.dumps(record))
    assert ownership.active_owner(job) is None
    record["heartbeat"] = time.time()
    (job / ownership.OWNER_FILE).write_text(json.dumps(record))
    assert ownership.active_owner(job) == "demo-r2"
    with pytest.raises(ownership.JobFolderBusy):
        ownership.check_free(job)


def test_a_lease_notices_a_takeover(tmp_path):
    job = tmp_path / "demo"
    job.mkdir()
    lease = ownership.JobLease(job, "demo-r1", interval=0.05).acquire()
    try:
        record = dict(ownership.read_owner(job), owner="demo-r2", pid=os.getpid())
        (job / ownership.OWNER_FILE).write_text(json.dumps(record))
        _wait_for(lambda: lease.lost)
        with pytest.raises(ownership.JobFolderBusy, match="taken over by demo-r2 while demo-r1 ran"):
            lease.check()
    finally:
        lease.release()
    assert ownership.read_owner(job)["owner"] == "demo-r2"  # the release leaves the new owner alone


def test_a_claim_that_never_started_can_be_released(tmp_path):
    job = tmp_path / "demo"
    job.mkdir()
    with ownership.job_lock(job):
        ownership.claim(job, "demo")
    ownership.release_claim(job, "demo")
    assert ownership.active_owner(job) is None


def test_a_held_submit_lock_times_out_with_a_message(tmp_path):
    job = tmp_path / "demo"
    holder = _python("""
import sys, time
from byzer_magic.runtime.ownership import job_lock
with job_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(30)
""", str(job))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ByzerError, match="is being submitted or resumed by another kernel"):
            with ownership.job_lock(job, timeout=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with ownership.job_lock(job, timeout=5):  # a killed holder's lock is free again (an OS file lock)
        pass
