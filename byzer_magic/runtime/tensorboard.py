"""Start or reuse a TensorBoard server for a log folder (TensorBoard's own ``manager.py`` is the model).

One server per folder, keyed by the folder's real path, with an info file per server under
``<state_dir>/tensorboard/`` (pid, port, logdir, started, keep). A server is reused only while it is
alive: its pid exists and its port answers as a TensorBoard serving that folder. Servers bind to
127.0.0.1; notebooks reach them through jupyter-server-proxy or a proxy URL (see widgets).

``keep=False`` servers end with the process that started them (the kernel): at exit, and also when
the kernel is killed, since the server watches its parent. ``keep=True`` servers outlive it.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

from byzer_magic.runtime.home import state_dir

RELOAD_INTERVAL = 5  # seconds: short, so that live curves update while a job trains

# Runs TensorBoard in the child. With --exit-with-parent it stops when the process that started it
# dies (a killed kernel runs no atexit), unless its info file says keep by then.
_CHILD = r"""
import json, os, signal, sys, threading, time
if sys.argv[1] == "--exit-with-parent":
    parent, info_path = os.getppid(), sys.argv[2]
    def watch():
        while True:
            time.sleep(1)
            if os.getppid() != parent:
                try:
                    keep = json.load(open(info_path)).get("keep")
                except (OSError, ValueError):
                    keep = False
                if not keep:
                    os.kill(os.getpid(), signal.SIGTERM)
                return
    threading.Thread(target=watch, daemon=True).start()
sys.argv = ["tensorboard"] + sys.argv[3:]
from tensorboard.main import run_main
run_main()
"""


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    port: int
    logdir: str
    started: float  # time.time() when it answered first
    keep: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@dataclass(frozen=True)
class Launched:
    info: ServerInfo

    @property
    def message(self) -> str:
        return f"Launched TensorBoard for {self.info.logdir} on port {self.info.port} (pid {self.info.pid})"


@dataclass(frozen=True)
class Reused:
    info: ServerInfo

    @property
    def message(self) -> str:
        age = _age(time.time() - self.info.started)
        return f"Reusing TensorBoard on port {self.info.port} (pid {self.info.pid}, started {age} ago)"


@dataclass(frozen=True)
class Failed:
    exit_code: int
    output: str

    @property
    def message(self) -> str:
        tail = "\n".join(self.output.strip().splitlines()[-20:])
        return f"TensorBoard exited with code {self.exit_code} before it answered:\n{tail}"


@dataclass(frozen=True)
class TimedOut:
    pid: int
    log: str

    @property
    def message(self) -> str:
        return f"TensorBoard (pid {self.pid}) did not answer in time; its output is in {self.log}"


StartResult = Union[Launched, Reused, Failed, TimedOut]


def start(logdir: str | os.PathLike, *, keep: bool = False, timeout: float = 60,
          reload_interval: float = RELOAD_INTERVAL) -> StartResult:
    """The live server for ``logdir`` (``Reused``), or a new one (``Launched``); ``Failed`` or
    ``TimedOut`` if it does not come up. ``keep=True`` also keeps a reused server past this process."""
    logdir = os.path.realpath(logdir)
    os.makedirs(logdir, exist_ok=True)  # the job may not have written its first event yet
    with _locked(logdir):  # two kernels asking at once get one server
        info = find(logdir)
        if info is not None:
            if keep and not info.keep:
                info = ServerInfo(**{**asdict(info), "keep": True})
                _write_info(info)
                _registered.pop(logdir, None)
            return Reused(info)
        return _launch(logdir, keep=keep, timeout=timeout, reload_interval=reload_interval)


def start_for_job(job_dir: str | os.PathLike, *, timeout: float = 60) -> str | None:
    """Start (or reuse) TensorBoard on 127.0.0.1 for the job in ``job_dir`` (its ``tensorboard/``
    folder) and print its address, which lands in the job's log; returns the URL, or None (and prints
    why) when it could not start: training goes on without it. Rank 0 calls this; the server ends
    with the calling process."""
    from byzer_magic.runtime.jobfiles import JobFiles  # noqa: PLC0415

    files = JobFiles(job_dir)
    outcome = start(files.tensorboard_dir, timeout=timeout)
    if isinstance(outcome, (Launched, Reused)):
        print(f"[{files.root.name}] TensorBoard: {outcome.info.url} (logdir {outcome.info.logdir}, "
              f"pid {outcome.info.pid})", flush=True)
        return outcome.info.url
    print(f"[{files.root.name}] TensorBoard did not start: {outcome.message}", flush=True)
    return None


def find(logdir: str | os.PathLike) -> ServerInfo | None:
    """The live server for ``logdir``, or None (a dead server's info file is removed)."""
    path = _info_path(os.path.realpath(logdir))
    try:
        info = ServerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _alive(info):
        return info
    path.unlink(missing_ok=True)
    return None


def list_servers() -> list[ServerInfo]:
    """The live servers started by byzer-magic on this machine."""
    servers = []
    for path in _dir().glob("*.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            info = find(json.loads(path.read_text())["logdir"])
            if info is not None:
                servers.append(info)
    return servers


def stop(logdir: str | os.PathLike, timeout: float = 10) -> bool:
    """Stop the server for ``logdir``; False if there was none."""
    logdir = os.path.realpath(logdir)
    _registered.pop(logdir, None)
    info = find(logdir)
    _info_path(logdir).unlink(missing_ok=True)
    if info is None:
        return False
    _terminate(info.pid, timeout)
    return True


# ---------------------------------------------------------------------------------------------------

_registered: dict[str, int] = {}  # logdir -> pid of keep=False servers this process launched
_children: dict[int, subprocess.Popen] = {}  # kept so that we reap what we launched


def _launch(logdir: str, *, keep: bool, timeout: float, reload_interval: float) -> StartResult:
    key = _key(logdir)
    log_path = _dir() / f"{key}.log"
    info_path = _info_path(logdir)
    args = ["--logdir", logdir, "--host", "127.0.0.1", "--port", "0",
            "--reload_interval", str(reload_interval)]
    watch = ["--keep", "-"] if keep else ["--exit-with-parent", str(info_path)]
    with open(log_path, "wb") as log:
        # Its own session: a Ctrl-C or a kernel interrupt sent to our process group must not reach it.
        process = subprocess.Popen([sys.executable, "-c", _CHILD, *watch, *args], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=_child_env())
    _children[process.pid] = process
    deadline = time.time() + timeout
    while time.time() < deadline:
        code = process.poll()
        if code is not None:
            return Failed(code, log_path.read_text(errors="replace"))
        port = _tensorboard_port(process.pid)
        if port and _answers(port, logdir):
            info = ServerInfo(pid=process.pid, port=port, logdir=logdir, started=time.time(), keep=keep)
            _write_info(info)
            if not keep:
                _registered[logdir] = process.pid
            return Launched(info)
        time.sleep(0.25)
    return TimedOut(process.pid, str(log_path))


def _tensorboard_port(pid: int) -> int | None:
    """The port TensorBoard chose for ``--port 0``, from the info file it writes for its own manager."""
    from tensorboard import manager  # noqa: PLC0415

    return next((info.port for info in manager.get_all() if info.pid == pid), None)


def _answers(port: int, logdir: str) -> bool:
    """True if a TensorBoard serving ``logdir`` answers on ``port`` (not some other process that took
    the port of a dead server)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/environment", timeout=2) as response:
            return os.path.realpath(json.load(response).get("data_location", "")) == logdir
    except (OSError, ValueError):
        return False


def has_scalars(port: int) -> bool:
    """True once the server on ``port`` has read scalars. TensorBoard's page, opened before that,
    says "No dashboards are active" and never looks again."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=2) as response:
            return bool(json.load(response).get("scalars", {}).get("enabled"))
    except (OSError, ValueError):
        return False


def _alive(info: ServerInfo) -> bool:
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process took the pid; the port check below decides
    return _answers(info.port, info.logdir)


def _terminate(pid: int, timeout: float) -> None:
    process = _children.pop(pid, None)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process is not None and process.poll() is not None:
                return
            if _exited(pid):  # a server another kernel started: we cannot reap it, only see it end
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        if process is not None:
            process.wait(5)


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in "ZX"  # a zombie has ended
    except FileNotFoundError:
        return True
    except OSError:  # no /proc (macOS)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


@atexit.register
def _stop_registered() -> None:
    for logdir, pid in list(_registered.items()):
        info = find(logdir)
        if info is not None and info.pid == pid and not info.keep:
            stop(logdir, timeout=3)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _dir() -> Path:
    path = state_dir() / "tensorboard"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _key(logdir: str) -> str:
    return hashlib.sha1(logdir.encode()).hexdigest()[:16]


def _info_path(logdir: str) -> Path:
    return _dir() / f"{_key(logdir)}.json"


def _write_info(info: ServerInfo) -> None:
    path = _info_path(info.logdir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(logdir: str):
    with open(_dir() / f"{_key(logdir)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _age(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
