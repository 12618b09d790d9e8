"""One owner per job folder: a lock around submitting, and a lease that the running job holds.

Two trainings in one folder would each prune the other's checkpoints. So:

- ``job_lock(job_dir)`` (the ``filelock`` package, on ``<prefix>/.<name>.lock``, beside the folder so that
  it exists before the folder does) serialises every submit and resume of one job name, across kernels
  and processes. Inside it, ``claim(job_dir, owner)`` refuses (``JobFolderBusy``, naming the running job)
  when another owner is active, else records the new submission as the owner, so that a second kernel is
  refused even before the first job's driver has started.
- ``JobLease(job_dir, owner=submission_id)`` is held by the job's driver while it runs: ``owner.json`` in
  the folder, its heartbeat refreshed by a thread every ``HEARTBEAT_S`` seconds. ``active_owner(job_dir)``
  names the owner while its heartbeat is fresh (``STALE_AFTER_S``; a driver on this host whose process is
  gone is not an owner at once). A second head cannot start a second training there: its driver's lease
  is refused.

The folder's state, not Ray's, decides: a head that looks dead while its job still trains keeps the lease.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from byzer_magic.errors import ByzerError

OWNER_FILE = "owner.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 45.0          # a running owner whose heartbeat is older is gone
CLAIM_TTL_S = 900.0           # a submitted job whose driver has not started yet (Ray may queue it)


class JobFolderBusy(ByzerError):
    """Another submission owns the job folder."""


def _lock_path(job_dir: Path) -> Path:
    return job_dir.parent / f".{job_dir.name}.lock"


@contextmanager
def job_lock(job_dir: str | os.PathLike, *, timeout: float = 30.0) -> Iterator[None]:
    """Hold the job's submit lock (``with job_lock(job_dir): ...``), across processes and machines that
    share the folder. ``ByzerError`` if another submit holds it for ``timeout`` seconds."""
    job_dir = Path(job_dir)
    job_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(_lock_path(job_dir)), timeout=timeout, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        raise ByzerError(f"job {job_dir.name} is being submitted or resumed by another kernel (its lock "
                         f"{_lock_path(job_dir)} was held for {timeout:g} s); try again when that finishes") from None
    try:
        yield
    finally:
        lock.release()


def read_owner(job_dir: str | os.PathLike) -> dict | None:
    """``owner.json``: ``{owner, state, host, pid, heartbeat, since}``, or None."""
    try:
        record = json.loads((Path(job_dir) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("owner") else None


def _is_fresh(record: dict, now: float) -> bool:
    age = now - float(record.get("heartbeat", 0))
    if record.get("state") == "released":
        return False
    if record.get("state") == "submitted":
        return age < CLAIM_TTL_S
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", 0))):
        return False
    return age < STALE_AFTER_S


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended: it only waits to be reaped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def active_owner(job_dir: str | os.PathLike) -> str | None:
    """The submission that owns the folder now (a fresh heartbeat, or a recent claim), else None."""
    record = read_owner(job_dir)
    return record["owner"] if record and _is_fresh(record, time.time()) else None


def _busy(job_dir: Path, record: dict) -> JobFolderBusy:
    age = time.time() - float(record.get("heartbeat", 0))
    if record.get("state") == "submitted":
        what = f"was submitted {age:.0f} s ago as {record['owner']} and has not started yet"
    else:
        what = (f"is running as {record['owner']} (driver pid {record.get('pid')} on {record.get('host')}, "
                f"heartbeat {age:.0f} s ago)")
    return JobFolderBusy(f"job {job_dir.name} {what}: one training per job folder ({job_dir}). Stop it first "
                         f"(%byzerllm stop {job_dir.name}) or choose another name")


def _write(job_dir: Path, record: dict) -> None:
    path = job_dir / OWNER_FILE
    tmp = path.with_name(f".{OWNER_FILE}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def claim(job_dir: str | os.PathLike, owner: str) -> None:
    """Record ``owner`` (a submission id) as the folder's owner-to-be; call it inside ``job_lock`` after
    the folder exists. ``JobFolderBusy`` naming the running job when another owner is active."""
    job_dir = Path(job_dir)
    record = read_owner(job_dir)
    if record and record["owner"] != owner and _is_fresh(record, time.time()):
        raise _busy(job_dir, record)
    now = time.time()
    _write(job_dir, {"owner": owner, "state": "submitted", "host": socket.gethostname(), "pid": os.getpid(),
                     "heartbeat": now, "since": now})


def release_claim(job_dir: str | os.PathLike, owner: str) -> None:
    """Give up a claim whose submission never started (the Ray submit failed)."""
    record = read_owner(job_dir)
    if record and record["owner"] == owner:
        _write(Path(job_dir), dict(record, state="released", heartbeat=time.time()))


def check_free(job_dir: str | os.PathLike) -> None:
    """``JobFolderBusy`` when any owner is active (for a caller that does not claim, e.g. a dry run)."""
    record = read_owner(job_dir)
    if record and _is_fresh(record, time.time()):
        raise _busy(Path(job_dir), record)


class JobLease:
    """The running job's hold on its folder (``with JobLease(job_dir, owner=submission_id): ...``).

    Acquired under ``job_lock``: refused (``JobFolderBusy``) when another owner is active; a claim made
    for this same submission at submit is taken over. A thread refreshes the heartbeat; ``lost`` turns
    true if another owner took the folder over (our heartbeat had gone stale), and ``check()`` raises
    then. Released (``owner.json`` marked released) on exit."""

    def __init__(self, job_dir: str | os.PathLike, owner: str, *, interval: float = HEARTBEAT_S):
        self.job_dir, self.owner, self.interval = Path(job_dir), owner, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = time.time()

    def _record(self) -> dict:
        return {"owner": self.owner, "state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                "heartbeat": time.time(), "since": self._since}

    def acquire(self) -> "JobLease":
        with job_lock(self.job_dir):
            record = read_owner(self.job_dir)
            if record and record["owner"] != self.owner and _is_fresh(record, time.time()):
                raise _busy(self.job_dir, record)
            _write(self.job_dir, self._record())
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.owner}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            record = read_owner(self.job_dir)
            if record and record["owner"] != self.owner:
                self.lost = True
                return
            try:
                _write(self.job_dir, self._record())
            except OSError:  # a full disk or a flaky mount: try again at the next beat
                pass

    def check(self) -> None:
        """``JobFolderBusy`` if the folder has been taken over by another submission."""
        if self.lost:
            record = read_owner(self.job_dir) or {"owner": "another submission"}
            raise JobFolderBusy(f"job {self.job_dir.name}'s folder was taken over by {record['owner']} while "
                                f"{self.owner} ran (its heartbeat had stopped): this run stops")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        record = read_owner(self.job_dir)
        if record and record["owner"] == self.owner:
            _write(self.job_dir, dict(self._record(), state="released"))

    def __enter__(self) -> "JobLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
