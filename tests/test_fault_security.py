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
from byzer_magic.runtime.spec import JobSection

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
    ray_job.submit_ray_job(JobSection(job_dir=str(job_dir), submission_id=submission_id, name=submission_id),
                           info)
    client = JobSubmissionClient(info.dashboard_url)
    deadline = time.time() + 300
    while not (status := client.get_job_status(submission_id)).is_terminal():
        assert time.time() < deadline, f"job {submission_id} still {status}"
        time.sleep(1)
    logs = client.get_job_logs(submission_id)
    assert f"no job.json in {job_dir}: not a byzer-magic job folder" in logs, logs
    assert not marker.exists() and status == JobStatus.FAILED


def test_a_request_without_rays_token_is_refused(ray_cluster, byzer_home):
    """The head's HTTP API (the Jobs API, the state API) answers only with the token: none is 401, a
    wrong one 403, and a job submitted without it is never created."""
    import json
    import urllib.error
    import urllib.request

    def call(path: str, token: str | None, body: dict | None = None) -> int:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        request = urllib.request.Request(ray_cluster.dashboard_url + path, headers=headers,
                                         data=json.dumps(body).encode() if body else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    token = (byzer_home / "ray_auth_token").read_text().strip()
    submission_id = f"no-token-{uuid.uuid4().hex[:8]}"
    assert call("/api/jobs/", None) == 401
    assert call("/api/v0/actors", None) == 401
    assert call("/api/jobs/", "0" * 64) == 403
    assert call("/api/jobs/", None, {"entrypoint": "true", "submission_id": submission_id}) == 401
    assert call("/api/jobs/", token) == 200
    assert call(f"/api/jobs/{submission_id}", token) == 404


def test_state_folders_must_be_the_users_own(tmp_path, monkeypatch):
    """A state folder another user made (it could hold a planted token or head record) is refused;
    one of ours left group/world-readable is tightened to 0700."""
    from byzer_magic.runtime.home import state_dir

    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    monkeypatch.setenv("BYZER_MAGIC_HOME", str(loose))
    assert state_dir() == loose and (loose.stat().st_mode & 0o777) == 0o700
    if os.getuid() != 0:
        pytest.skip("making a folder another user owns needs root")
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)
    monkeypatch.setenv("BYZER_MAGIC_HOME", str(planted))
    with pytest.raises(ByzerError, match=f"state folder {planted} belongs to another user"):
        state_dir()


def test_secrets_never_reach_the_jobs_api(ray_cluster, byzer_home, tmp_path, monkeypatch):
    """HF_TOKEN and the like go to the driver through a 0600 file in the job folder, which the driver
    consumes; the job's metadata and runtime_env, as the Jobs API shows them, never hold them (plain
    variables such as HF_HOME still travel in env_vars). A real Ray Job, read back without our SDK."""
    import json
    import urllib.request

    from ray.job_submission import JobSubmissionClient

    from byzer_magic.runtime import cluster, job_env
    from byzer_magic.runtime.kernel import ray_job

    values = {"HF_TOKEN": f"hf_{uuid.uuid4().hex}", "WANDB_API_KEY": uuid.uuid4().hex,
              "MLFLOW_TRACKING_PASSWORD": uuid.uuid4().hex}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    job_dir = tmp_path / "job-secret"
    job_dir.mkdir(mode=0o700)
    entrypoint, runtime_env = ray_job.runtime_env_for(str(job_dir), cluster.connect())
    secrets_file = job_dir / job_env.SECRETS_FILE
    assert (secrets_file.stat().st_mode & 0o777) == 0o600 and json.loads(secrets_file.read_text()) == values
    secrets_file.unlink()

    submission_id = f"secrets-{uuid.uuid4().hex[:8]}"
    info = cluster.connect()
    ray_job.submit_ray_job(JobSection(job_dir=str(job_dir), submission_id=submission_id, name=submission_id), info)
    client = JobSubmissionClient(info.dashboard_url)
    deadline = time.time() + 300
    while not client.get_job_status(submission_id).is_terminal():
        assert time.time() < deadline
        time.sleep(1)
    assert "no job.json" in client.get_job_logs(submission_id)  # the driver ran: and it consumed the file
    assert not secrets_file.exists()
    token = (byzer_home / "ray_auth_token").read_text().strip()
    seen = []
    for path in (f"/api/jobs/{submission_id}", "/api/jobs/", "/api/v0/jobs"):
        request = urllib.request.Request(info.dashboard_url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            seen.append(response.read().decode())
    assert submission_id in seen[0] and str(tmp_path / "hf-home") in seen[0]  # plain variables still go
    for key, value in values.items():
        assert all(value not in text for text in seen), f"{key} is readable through the Jobs API"


def test_the_driver_takes_its_secrets_from_the_file(tmp_path, monkeypatch):
    from byzer_magic.runtime import job_env

    monkeypatch.delenv("HF_TOKEN", raising=False)
    plain, secret = job_env.split_env({"HF_TOKEN": "t", "HF_HOME": "/h", "NCCL_DEBUG": "INFO", "HOME": "/root",
                                       "WANDB_API_KEY": "k", "HUGGING_FACE_HUB_TOKEN": "u"})
    assert plain == {"HF_HOME": "/h", "NCCL_DEBUG": "INFO"}
    assert secret == {"HF_TOKEN": "t", "WANDB_API_KEY": "k", "HUGGING_FACE_HUB_TOKEN": "u"}
    job_env.write_secrets(tmp_path, {"HF_TOKEN": "t"})
    assert job_env.load_secrets(tmp_path) == {"HF_TOKEN": "t"} and os.environ["HF_TOKEN"] == "t"
    assert not (tmp_path / job_env.SECRETS_FILE).exists() and job_env.load_secrets(tmp_path) == {}


def test_the_driver_hands_its_secrets_to_the_workers_while_it_trains(tmp_path, monkeypatch):
    """Workers on another node do not inherit the kernel's environment, and Ray Train shows its
    train_loop_config on the dashboard: the driver's secrets reach them through a 0600 file that lives only
    while the training runs (runtime/job_env.py)."""
    from byzer_magic.runtime import job_env

    monkeypatch.setattr(job_env, "_loaded", {})
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with job_env.handed_to_workers(tmp_path):  # no secrets: no file
        assert not (tmp_path / job_env.WORKER_SECRETS_FILE).exists()
    job_env.write_secrets(tmp_path, {"WANDB_API_KEY": "k" * 40, "HF_TOKEN": "t"})
    job_env.load_secrets(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY")  # a worker's environment, on another node
    handed = tmp_path / job_env.WORKER_SECRETS_FILE
    with job_env.handed_to_workers(tmp_path):
        assert handed.stat().st_mode & 0o777 == 0o600
        assert job_env.load_worker_secrets(tmp_path) == ["HF_TOKEN", "WANDB_API_KEY"]
        assert os.environ["WANDB_API_KEY"] == "k" * 40
        assert job_env.load_worker_secrets(tmp_path) == ["HF_TOKEN", "WANDB_API_KEY"]  # a restarted worker
    assert not handed.exists() and job_env.load_worker_secrets(tmp_path) == []
    with pytest.raises(RuntimeError), job_env.handed_to_workers(tmp_path):
        raise RuntimeError("the training failed")
    assert not handed.exists()


def test_the_entrypoint_keeps_the_secrets_where_the_driver_finds_them(tmp_path):
    """``python -m byzer_magic.runtime.job_env`` runs as ``__main__``; the driver's ``job_env`` is the module
    imported by name: the secrets must be in that one (else the workers would get none)."""
    import subprocess
    import sys

    from byzer_magic.runtime import job_env

    job_env.write_secrets(tmp_path, {"HF_TOKEN": "t"})
    probe = ("import runpy, sys\n"
             "real = runpy.run_module\n"
             "def driver(name, **kwargs):  # the driver's first line: what its job_env holds\n"
             "    if name != 'byzer_magic.runtime.driver.entry':\n"
             "        return real(name, **kwargs)\n"
             "    import byzer_magic.runtime.job_env as job_env\n"
             "    print(sorted(job_env.secrets()))\n"
             "runpy.run_module = driver\n"
             f"sys.argv = ['job_env', {str(tmp_path)!r}]\n"
             "real('byzer_magic.runtime.job_env', run_name='__main__', alter_sys=True)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "['HF_TOKEN']" in out.stdout, out.stdout + out.stderr
