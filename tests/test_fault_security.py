"""What byzer-magic exposes (docs/RELIABILITY.md, "Security"): the embedded head's services listen on
the loopback only, its token and state folder are the user's own, and a job's name or folder can neither
escape ``localPathPrefix`` nor reach a shell. TensorBoard's loopback binding is checked in
tests/test_tensorboard.py; a real job's folder permissions in tests/test_fault_head.py."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from byzer_magic.errors import ByzerError

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_head_services_listen_on_the_loopback_only(ray_cluster, byzer_home):
    """Every listening socket of every process of the session's head (its services, and the workers
    they started: their environment names the head's home) is on the loopback."""
    import psutil

    listening: dict[str, set[str]] = {}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("BYZER_MAGIC_HOME") != str(byzer_home) or proc.pid == os.getpid():
                continue
            ips = {c.laddr.ip for c in proc.net_connections("inet") if c.status == "LISTEN"}
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if ips:
            program = next((p for p in ("dashboard.py", "gcs_server", "raylet", "client.server", "ray::")
                            if p in cmdline), cmdline[:60])
            listening.setdefault(program, set()).update(ips)
    assert {"dashboard.py", "gcs_server", "raylet"} <= set(listening), listening
    exposed = {program: ips - LOOPBACK for program, ips in listening.items() if ips - LOOPBACK}
    assert not exposed, f"head services listening beyond the loopback: {exposed}"


def test_state_folder_and_token_are_private(ray_cluster, byzer_home):
    assert (byzer_home.stat().st_mode & 0o777) == 0o700
    assert ((byzer_home / "ray_auth_token").stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/etc/passwd", "a/b", "..", ".hidden", "",
                                  "x;rm -rf ~", "$(touch pwned)", "`id`", "a b", "a\nb", "trailing-newline\n", "x" * 200])
def test_job_names_cannot_escape_the_prefix_or_reach_a_shell(name, tmp_path):
    from byzer_magic.runtime.kernel.submit import job_dir_for

    with pytest.raises(ByzerError, match="invalid job name|would escape"):
        job_dir_for(name, str(tmp_path))


def test_job_folder_reaches_the_entrypoint_as_one_quoted_argument(ray_cluster, tmp_path):
    """A localPathPrefix full of shell syntax reaches the job's entrypoint, through the shell Ray runs it
    with, as one plain argument: a real Ray Job, whose entrypoint finds the folder empty and says so."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from byzer_magic.runtime import cluster
    from byzer_magic.runtime.kernel import ray_job

    marker = tmp_path / "pwned"
    job_dir = tmp_path / f"it's $(touch {marker}) `touch {marker}`; a b" / "job-1"
    job_dir.mkdir(parents=True)
    submission_id = f"quoting-{uuid.uuid4().hex[:8]}"
    info = cluster.connect()
    ray_job.submit_ray_job({"job_dir": str(job_dir), "submission_id": submission_id, "name": submission_id},
                           info)
    client = JobSubmissionClient(info.dashboard_url)
    deadline = time.time() + 300
    while not (status := client.get_job_status(submission_id)).is_terminal():
        assert time.time() < deadline, f"job {submission_id} still {status}"
        time.sleep(1)
    logs = client.get_job_logs(submission_id)
    assert f"no job.json in {job_dir}: not a byzer-magic job folder" in logs, logs
    assert not marker.exists() and status == JobStatus.FAILED
