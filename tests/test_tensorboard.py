"""TensorBoard servers: start, reuse, 127.0.0.1 only, the loss scalars through TensorBoard's HTTP API,
stop, shutdown with the process that started them (unless kept), failures."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import psutil
import pytest

from byzer_magic.runtime import tensorboard
from byzer_magic.runtime.worker.metrics import MetricsWriter


def write_metrics(job_dir, steps, start=1):
    writer = MetricsWriter(job_dir, resume_step=start - 1)
    for step in range(start, start + steps):
        writer.log(step, loss=10.0 / step, lr=1e-3, grad_norm=1.0, tokens_per_s=100.0, tokens=64 * step, epoch=0)
    writer.close()


def scalars(port, tag="train/loss"):
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=.&tag={tag}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return [(step, value) for _wall, step, value in json.load(response)]


def dead(pid, within=10.0):
    deadline = time.time() + within
    while time.time() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def job_dir(tmp_path):
    write_metrics(tmp_path, 5)
    return tmp_path


def test_start_reuse_scalars_and_stop(job_dir):
    logdir = job_dir / "tensorboard"
    first = tensorboard.start(logdir, reload_interval=1)
    assert isinstance(first, tensorboard.Launched), getattr(first, "message", first)
    info = first.info
    try:
        assert info.logdir == os.path.realpath(logdir) and info.port > 0 and not info.keep
        assert [round(v, 4) for _, v in scalars(info.port)] == [round(10.0 / s, 4) for s in range(1, 6)]

        # Every listening socket of the server and of its data-server child is on the loopback.
        procs = [psutil.Process(info.pid), *psutil.Process(info.pid).children(recursive=True)]
        listening = [c.laddr.ip for p in procs for c in p.net_connections("inet") if c.status == "LISTEN"]
        assert listening and set(listening) <= {"127.0.0.1", "::1"}, listening

        again = tensorboard.start(logdir)
        assert isinstance(again, tensorboard.Reused) and again.info == info
        assert "Reusing TensorBoard on port" in again.message
        assert tensorboard.find(logdir) == info and info in tensorboard.list_servers()
        kept = tensorboard.start(logdir, keep=True)  # keep a server launched unkept: same server
        assert isinstance(kept, tensorboard.Reused) and kept.info.pid == info.pid and kept.info.keep

        # New steps show up while the server runs (the reload interval is short).
        write_metrics(job_dir, 3, start=6)
        deadline = time.time() + 20
        while len(scalars(info.port)) < 8 and time.time() < deadline:
            time.sleep(0.5)
        assert [s for s, _ in scalars(info.port)] == list(range(1, 9))

        # A server that died (its info file left behind) is replaced, not reused.
        os.kill(info.pid, signal.SIGKILL)
        assert dead(info.pid)
        second = tensorboard.start(logdir)
        assert isinstance(second, tensorboard.Launched) and second.info.pid != info.pid
        assert len(scalars(second.info.port)) == 8
    finally:
        assert tensorboard.stop(logdir)
    assert dead(second.info.pid) and tensorboard.find(logdir) is None
    assert not tensorboard.stop(logdir)


KERNEL = textwrap.dedent("""
    import sys, time
    from concurrent.futures import ThreadPoolExecutor
    from byzer_magic.runtime import tensorboard
    with ThreadPoolExecutor(2) as pool:  # two folders start at once: one lock each, no waiting
        unkept = pool.submit(tensorboard.start, sys.argv[1])
        kept = pool.submit(tensorboard.start, sys.argv[2], keep=True)
        print(unkept.result().info.pid, kept.result().info.pid, flush=True)
    if sys.argv[3] == "killed":
        time.sleep(600)
""")


@pytest.mark.parametrize("end", ["exits", "killed"])
def test_server_ends_with_its_kernel_unless_kept(job_dir, tmp_path_factory, end):
    """A kernel that exits stops its servers at exit; one that is killed runs no atexit, and its
    servers notice that their parent is gone. Kept servers outlive it either way."""
    unkept_dir, kept_dir = job_dir / "tensorboard", tmp_path_factory.mktemp("kept")
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, str(unkept_dir), str(kept_dir), end],
                              stdout=subprocess.PIPE, text=True, env=os.environ)
    unkept, kept = map(int, kernel.stdout.readline().split())
    if end == "killed":
        kernel.kill()
    kernel.wait()
    try:
        assert dead(unkept)
        assert tensorboard.find(unkept_dir) is None
        time.sleep(1.5)  # longer than the watcher's poll: a kept server must still be there
        info = tensorboard.find(kept_dir)
        assert info is not None and info.pid == kept and info.keep
    finally:
        tensorboard.stop(kept_dir)
    assert dead(kept)


def test_failed_and_timed_out(job_dir, monkeypatch):
    monkeypatch.setattr(tensorboard, "_CHILD", "import sys; print('no such flag: --bogus'); sys.exit(3)")
    failed = tensorboard.start(job_dir / "tensorboard")
    assert isinstance(failed, tensorboard.Failed) and failed.exit_code == 3
    assert "no such flag" in failed.output and "exited with code 3" in failed.message

    monkeypatch.setattr(tensorboard, "_CHILD", "import time; time.sleep(60)")
    timed_out = tensorboard.start(job_dir / "tensorboard", timeout=1)
    assert isinstance(timed_out, tensorboard.TimedOut) and "did not answer" in timed_out.message
    os.kill(timed_out.pid, signal.SIGKILL)
    assert dead(timed_out.pid)
    assert tensorboard.find(job_dir / "tensorboard") is None


def test_a_restart_without_a_checkpoint_rewrites_the_steps_it_trains_again(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from byzer_magic.runtime.worker.metrics import METRICS_FILE, read_metrics

    write_metrics(tmp_path, 5)  # an attempt lost before its first checkpoint
    write_metrics(tmp_path, 3)  # the next one starts again at step 1
    assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 3
    assert read_metrics(tmp_path)["step"].tolist() == [1, 2, 3]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
