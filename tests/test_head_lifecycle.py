"""The embedded head's life across kernels (issue #14 items 1, 7, 8), on a head of its own (its own
BYZER_MAGIC_HOME, driven by two child processes that play two kernels), so the session's head is never
touched:

- a second kernel reuses the first kernel's head; ``stop_local_head()`` ends every process the head
  started, the dashboard and runtime-env agents and the workers included (listed before and after);
- a kernel attached to a head that stops lets go of it (alive and idle), and, once another kernel has
  replaced the head, reconnects to the new one and says so;
- a head that only looks dead (its dashboard frozen, then crashed; its GCS alive) never makes
  ``connect()`` start a second head: it says what is wrong instead.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

from byzer_magic.runtime import cluster, processes
from tests.support.faults import wait_for
from tests.support.kernels import Kernel

CONNECT = "from byzer_magic.runtime import cluster\nimport ray\ninfo = cluster.connect()\n"


def _cmdlines(procs) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(" ".join(proc.cmdline()))
        except psutil.Error:
            pass
    return out


def _running(procs) -> list:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            pass
    return alive


def _gcs_servers(home: Path) -> list:
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if "gcs_server" in (proc.info["name"] or "") and proc.environ().get("BYZER_MAGIC_HOME") == str(home):
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def kernels():
    home = Path("/tmp") / f"bm-life-{os.getpid()}"  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"BYZER_MAGIC_HOME": str(home)}
    a, b = Kernel(env), Kernel(env)
    yield home, a, b
    for kernel in (a, b):
        kernel.close()
    if (home / "ray_head.json").exists():
        processes.kill_head(json.loads((home / "ray_head.json").read_text()))
    shutil.rmtree(home, ignore_errors=True)


def test_stop_replace_and_a_head_that_only_looks_dead(kernels):
    home, a, b = kernels
    first, started, one = a.ok(CONNECT + "out = [info.address, info.started, ray.get(ray.remote(lambda: 1).remote())]")
    assert started and one == 1
    assert b.ok(CONNECT + "out = [info.address, info.started]") == [first, False]  # reused, not a second head

    # A clean stop ends every process of the head, whatever Ray renamed it to.
    record = json.loads((home / "ray_head.json").read_text())
    procs = cluster.head_processes(record)
    names = " | ".join(_cmdlines(procs))
    for program in ("gcs_server", "raylet", "dashboard.py", "DashboardAgent", "RuntimeEnvAgent", "ray::"):
        assert program in names, f"{program} is not among the head's processes: {names}"
    b.ok("cluster.stop_local_head()")
    assert not _cmdlines(_running(procs)), "still running after stop_local_head()"
    assert not cluster.head_processes(record)
    # Kernel A, attached to the stopped head, lets go of it within seconds (Ray would otherwise retry
    # at full speed and end A's process after a minute): alive and idle.
    wait_for(lambda: a.ok("out = not ray.is_initialized()"), 60, poll=1, what="kernel A to let go of the stopped head")
    cpu = psutil.Process(a.pid).cpu_times()
    time.sleep(3)
    assert sum(psutil.Process(a.pid).cpu_times()[:2]) - sum(cpu[:2]) < 0.5

    # Kernel B starts a new head; kernel A, still attached to the stopped one, moves to it and says so.
    second, started = b.ok(CONNECT + "out = [info.address, info.started]")
    assert started and second != first
    answer, printed = a.run("info = cluster.connect()\nout = [info.address, ray.get(ray.remote(lambda: 2).remote())]")
    assert answer == {"ok": True, "out": [second, 2]}, printed
    assert f"the embedded Ray head at {first} was replaced by another kernel's, at {second}; reconnected" in printed

    # The dashboard frozen (a head too busy to answer), then killed (crashed): its GCS lives, so connect()
    # says what is wrong and starts no second head.
    record = json.loads((home / "ray_head.json").read_text())
    dashboard = cluster.head_processes(record, "dashboard.py")
    assert len(dashboard) == 1, _cmdlines(dashboard)
    dashboard[0].suspend()
    try:
        answer, printed = b.run("cluster.UNRESPONSIVE_PATIENCE = 4\ninfo = cluster.connect()")
    finally:
        dashboard[0].resume()
    assert not answer["ok"] and f"the embedded Ray head at {second} still runs" in answer["error"], answer
    assert f"its dashboard process (pid {dashboard[0].pid}) lives but has not answered" in answer["error"]
    assert "does not start a second head" in answer["error"] and len(_gcs_servers(home)) == 1
    dashboard[0].kill()
    dashboard[0].wait(10)
    answer, _ = a.run("cluster.UNRESPONSIVE_PATIENCE = 4\ninfo = cluster.connect()")
    assert not answer["ok"] and "its dashboard process has exited (crashed" in answer["error"], answer
    assert len(_gcs_servers(home)) == 1 and json.loads((home / "ray_head.json").read_text()) == record

    procs = cluster.head_processes(record)
    b.ok("cluster.stop_local_head()")
    assert not _cmdlines(_running(procs)) and not cluster.head_processes(record) and not _gcs_servers(home)


def test_the_heads_services_get_different_free_ports():
    """A head's start failed when two of its services were given one port (ports taken one after
    another, each socket closed before the next: the operating system may hand the same port out
    again). ``free_ports`` holds them all until the last is bound."""
    import socket

    from byzer_magic.runtime.network import free_ports

    for _ in range(200):
        ports = free_ports(6)
        assert len(set(ports)) == 6, ports
    for port in free_ports(6):  # and each is free: it can be bound again
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
