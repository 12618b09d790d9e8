"""Fault injection for the reliability tests: find a job's worker processes, kill or freeze them, and
look at what a job still holds on the cluster. Everything acts on real processes and on Ray's own state
API; nothing in the runtime is patched."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Callable

# Ray Train's controller logs each worker group it starts, one line per worker:
#   (TrainController pid=20550) - (ip=127.0.0.1, pid=22248) world_rank=0, local_rank=0, node_rank=0
_GROUP_LINE = re.compile(r"pid=(\d+)\) world_rank=(\d+)")


def wait_for(predicate: Callable[[], object], timeout: float, poll: float = 0.2, what: str = "") -> object:
    """``predicate()``'s first truthy value; AssertionError after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(poll)


def worker_pids(handle) -> dict[int, int]:
    """``{rank: pid}`` of the job's current worker group, alive, as the workers recorded themselves
    (``JobHandle.workers()``; Ray's log of the group reaches the job's log seconds later, at times
    after a short run has ended)."""
    return {rank: record["pid"] for rank, record in handle.workers().items() if _alive(record["pid"])}


def all_worker_pids(handle) -> set[int]:
    """Every worker pid of every group the job started (restarts included), from Ray Train's log of
    each group it started and the workers' own records."""
    return ({int(pid) for pid, _ in _GROUP_LINE.findall(handle.logs())}
            | {record["pid"] for record in handle.workers().values()})


def group_of(handle, size: int, timeout: float):
    """Wait until the job's worker group of ``size`` workers runs; its ``{rank: pid}``."""
    return wait_for(lambda: (pids if len(pids := worker_pids(handle)) == size else None), timeout, poll=0.5,
                    what=f"{size} workers of {handle.name}")


def titled_workers(name: str) -> list[int]:
    """Processes titled ``W-<rank>-<name>`` (the trainer's title, while it lasts)."""
    import psutil

    title = re.compile(rf"^W-\d+-{re.escape(name)}$")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if title.match(" ".join(proc.info["cmdline"] or []).strip()):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(pids) -> list[int]:
    return [pid for pid in pids if _alive(pid)]


def signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def freeze(pids) -> None:
    """Stop the processes where they are (SIGSTOP), as a hung worker would be."""
    signal_all(pids, signal.SIGSTOP)


def thaw(pids) -> None:
    signal_all(pids, signal.SIGCONT)


def checkpoint_state(ckpt_dir: Path) -> dict:
    """What is on disk: the ``latest`` file's text and the folder names."""
    latest = ckpt_dir / "latest"
    return {"latest": latest.read_text().strip() if latest.exists() else None,
            "entries": sorted(p.name for p in ckpt_dir.iterdir()) if ckpt_dir.exists() else []}


def _address() -> str:
    # Ray's state API must be told which cluster: without an address it looks for "the" Ray on this
    # machine, and a shared machine runs several.
    from byzer_magic.runtime import cluster

    return cluster.connect().dashboard_url


def held_by_job(ray_job_id: str) -> dict:
    """The job's actors that are not DEAD and its placement groups not REMOVED, from Ray's state API
    (``ray list actors`` / ``ray list placement-groups``), detached helpers left out."""
    from ray.util.state import list_actors, list_placement_groups

    address = _address()
    actors = list_actors(address=address, filters=[("job_id", "=", ray_job_id), ("state", "!=", "DEAD")],
                         detail=True, limit=10_000, raise_on_missing_output=False)
    groups = list_placement_groups(address=address, filters=[("creator_job_id", "=", ray_job_id),
                                                             ("state", "!=", "REMOVED")],
                                   limit=10_000, raise_on_missing_output=False)
    return {"actors": sorted(f"{a.class_name}:{a.state}" for a in actors if not a.is_detached),
            "placement_groups": [g.placement_group_id for g in groups]}


def alive_detached_actors() -> list[str]:
    """Class names of the cluster's alive detached actors (helpers that outlive jobs by design)."""
    from ray.util.state import list_actors

    alive_actors = list_actors(address=_address(), filters=[("state", "=", "ALIVE")], detail=True,
                               limit=10_000, raise_on_missing_output=False)
    return sorted(a.class_name for a in alive_actors if a.is_detached)


def released(handle, worker_pids_seen) -> dict:
    """What job ``handle`` (its current attempt) still holds: actors, placement groups, processes."""
    ray_job_id = handle.ray_job_id()
    assert ray_job_id, f"Ray does not know job {handle.submission_id}"
    return {**held_by_job(ray_job_id), "processes": alive(worker_pids_seen) + titled_workers(handle.name)}


def wait_released(handle, timeout: float = 90) -> dict:
    """Wait until job ``handle`` holds no actor, no placement group and no worker process; returns the
    last look (all empty), AssertionError with what is left after ``timeout``."""
    pids = all_worker_pids(handle)
    state = {}

    def nothing_held():
        state.update(released(handle, pids))
        return not any(state.values())

    try:
        wait_for(nothing_held, timeout, poll=1.0, what=f"job {handle.name} to release everything")
    except AssertionError:
        raise AssertionError(f"job {handle.submission_id} still holds {state}") from None
    return state
