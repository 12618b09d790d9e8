"""The embedded Ray head dies under a running job (docs/RELIABILITY.md): the next connect says so and
starts a new head, the job is reported LOST with its last checkpoint, and a resume finishes it.

The head killed here is a second one with its own BYZER_MAGIC_HOME, driven by a child process that
plays the kernel, so that the session's head (other tests' jobs) is never touched.
"""
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

from tests.support.faults import wait_for
from tests.support.tiny import make_tiny_llama_dir, stdlib_text_files, train_sentencepiece

pytestmark = pytest.mark.slow

STEPS = 30
KERNEL = textwrap.dedent("""
    import json, sys
    from byzer_magic import DeepSpeedTrain, ParallelConfig, TrainArgs
    from byzer_magic.runtime import cluster
    from byzer_magic.runtime.kernel.jobs import get_job
    from byzer_magic.runtime.kernel.resume import resume

    model_dir, text, jobs = sys.argv[1:4]
    def say(**kv):
        print("@@" + json.dumps(kv, default=str), flush=True)

    info = cluster.connect()
    say(event="connected", address=info.address)
    handle = DeepSpeedTrain(ParallelConfig(
        num_workers=1, name="head-lost", local_path_prefix=jobs,
        train_args=TrainArgs(model_path=model_dir, data_dir=text, steps_per_epoch=%(steps)d, max_length=32,
                             checkpoint_every=3))).submit()
    say(event="submitted", job_dir=handle.job_dir)
    sys.stdin.readline()  # the test kills the head, then says go: this is the kernel's next cell

    info = cluster.connect()
    job = get_job("head-lost", jobs)
    say(event="reconnected", address=info.address, status=job.status(), checkpoint=job.last_checkpoint)
    resumed = resume("head-lost", local_path_prefix=jobs)
    status = resumed.wait(timeout=900)
    say(event="resumed", status=status, steps=resumed.metrics()["step"].tolist(), logs=resumed.logs()[-3000:])
    cluster.stop_local_head()
""") % {"steps": STEPS}


def kill_head_services(home: Path) -> list[str]:
    """SIGKILL the services of the head recorded in ``home`` (GCS, raylet, dashboard, agents: their
    command lines name its temp dir), as a crash or the OOM killer would. Returns their command lines."""
    import psutil

    temp_dir = json.loads((home / "ray_head.json").read_text())["temp_dir"]
    killed = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if temp_dir in cmdline and proc.pid != os.getpid():
            try:
                proc.send_signal(signal.SIGKILL)
                killed.append(cmdline[:100])
            except psutil.NoSuchProcess:
                pass
    return killed


def started_by(home: Path, before: float, but: int) -> list:
    """Processes started before ``before`` whose environment names ``home`` (the head's workers, the
    job's driver and training worker), the process ``but`` (the kernel) left out."""
    import psutil

    found = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if (proc.pid not in (but, os.getpid()) and proc.info["create_time"] < before
                    and proc.environ().get("BYZER_MAGIC_HOME") == str(home)):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _cmdline(proc) -> str:
    try:
        return " ".join(proc.cmdline())
    except Exception:  # it ended meanwhile
        return ""


def test_head_killed_under_a_running_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("head")
    home = Path("/tmp") / f"bm-head-{os.getpid()}"  # short: Ray's socket paths live under it
    tokenizer = train_sentencepiece(root / "tok")
    model_dir = make_tiny_llama_dir(root / "llama", tokenizer)
    text = root / "corpus.txt"
    text.write_text("\n".join(p.read_text() for p in stdlib_text_files(3)))
    env = dict(os.environ, BYZER_MAGIC_HOME=str(home), BYZER_MAGIC_JOBS=str(root / "jobs"))
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, str(model_dir), str(text), str(root / "jobs")],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=Path(__file__).parent.parent)
    output: list[str] = []

    def event(name: str, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = kernel.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("@@") and json.loads(line[2:])["event"] == name:
                return json.loads(line[2:])
        raise AssertionError(f"no {name!r} from the kernel:\n" + "".join(output[-60:]))

    try:
        first = event("connected")
        job_dir = Path(event("submitted")["job_dir"])
        checkpoints = job_dir / "checkpoints"
        wait_for(lambda: (checkpoints / "latest").exists(), 900, poll=0.02, what="the job's first checkpoint")
        # Freeze the training worker so that the head dies mid-run on any machine; it dies with it.
        import psutil

        worker = psutil.Process(json.loads((job_dir / "workers" / "rank-0.json").read_text())["pid"])
        worker.suspend()
        killed_at = time.time()
        killed = kill_head_services(home)
        worker.resume()
        assert any("gcs_server" in k for k in killed) and any("raylet" in k for k in killed), killed
        kernel.stdin.write("go\n")
        kernel.stdin.flush()

        again = event("reconnected")
        # What the dead head ran (its workers, the job's driver and training worker) did not outlive it.
        orphans = lambda: [_cmdline(p)[:80] for p in started_by(home, killed_at, kernel.pid)]  # noqa: E731
        try:
            wait_for(lambda: not orphans(), 90, poll=1, what="the dead head's processes to end")
        except AssertionError:
            raise AssertionError(f"processes of the dead head still run: {orphans()}") from None
        said = "".join(output)
        assert f"the embedded Ray head at {first['address']} had stopped; started a new one" in said
        assert again["address"] != first["address"]
        assert again["status"] == "LOST" and again["checkpoint"].startswith(str(checkpoints / "global_step"))
        done = event("resumed")
        assert done["status"] == "SUCCEEDED", done["logs"]
        assert done["steps"] == list(range(1, STEPS + 1))
        assert kernel.wait(timeout=120) == 0, "".join(output[-40:])
        # The job's files are the user's own: the job folder private, nothing world-writable.
        assert (job_dir.stat().st_mode & 0o777) == 0o700
        writable = [p for p in job_dir.rglob("*") if p.stat().st_mode & 0o002]
        assert not writable, writable
    finally:
        if kernel.poll() is None:
            kernel.kill()
        if (home / "ray_head.json").exists():
            kill_head_services(home)
        for proc in started_by(home, time.time(), os.getpid()):
            proc.kill()
