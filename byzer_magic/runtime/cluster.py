"""Connect to Ray: an existing cluster (``RAY_ADDRESS`` or an explicit address), or the embedded
default, a local Ray head that byzer-magic starts itself as a daemon and reuses while it lives.

The embedded head binds its dashboard (and so the Jobs API) to 127.0.0.1 and turns on Ray's token
authentication with a token private to the user; every client we start gets ``RAY_AUTH_MODE=token``
and the token's path. Because the head is its own process session, detached jobs outlive the kernel.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.home import state_dir

HEAD_FILE = "ray_head.json"


@dataclass(frozen=True)
class ClusterInfo:
    address: str          # the GCS address ray.init() takes
    dashboard_url: str    # http://host:port, also the Jobs API
    embedded: bool        # True: the local head byzer-magic started
    started: bool = False  # True: started by this call (False: reused or external)

    def describe(self) -> str:
        if not self.embedded:
            return f"Ray cluster at {self.address} (dashboard {self.dashboard_url})"
        verb = "started" if self.started else "reusing"
        return f"Embedded Ray head ({verb}) at {self.address}; dashboard {self.dashboard_url}"


def _token_path() -> Path:
    path = state_dir() / "ray_auth_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def auth_env() -> dict[str, str]:
    """The variables a client of the embedded head needs (Ray 2.60 token auth)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_token_path())}


def use_auth_env() -> None:
    """Put the auth variables into this process, also when ``ray`` was imported before them: Ray
    caches its config at import, so refresh it the way Ray itself does when it enables token auth."""
    os.environ.update(auth_env())
    import ray._raylet  # noqa: PLC0415

    ray._raylet.Config.initialize("")


def _dial(address: str) -> None:
    """Make this process reach the head at ``address`` where it is. Ray replaces a 127.0.0.1 node
    address by the machine's routable one unless told the cluster is one machine: the head we start is
    told so (it then listens on the loopback only), and so must be its clients, or they dial the GCS at
    the routable address. A head started by an older version listens on the routable address."""
    import ray._private.ray_constants  # noqa: PLC0415

    loopback = address.startswith("127.0.0.1:")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0" if loopback else "1"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = not loopback  # read from that variable at import


def _init_once(address: str) -> None:
    """Connect this process to the cluster at ``address`` unless it already is."""
    import ray  # noqa: PLC0415

    if not ray.is_initialized():
        _dial(address)
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)


def _alive(dashboard_url: str, timeout: float = 3) -> bool:
    request = urllib.request.Request(f"{dashboard_url}/api/version",
                                     headers={"Authorization": f"Bearer {_token_path().read_text().strip()}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def _temp_dir() -> Path:
    # Ray puts unix sockets under its temp dir: keep the path short (sun_path is 107 bytes).
    preferred = state_dir() / "ray"
    if len(str(preferred)) <= 40:
        return preferred
    return Path(tempfile.gettempdir()) / f"byzer-ray-{os.getuid()}-{abs(hash(str(preferred))) % 10**8}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_num_cpus() -> int:
    """Logical CPUs for the embedded head.

    Training workers, the Train controller, the job driver and Ray Data's tokenising tasks each hold a
    CPU slot; on a 2-core laptop, slots equal to the cores would leave tokenising tasks waiting for
    workers that wait for data. Over-subscribing the slots slows nothing that would otherwise run and
    keeps every stage schedulable.
    """
    return max(8, 2 * (os.cpu_count() or 1))


def _head_env() -> dict[str, str]:
    env = dict(os.environ, **auth_env())
    env.setdefault("TORCH_EXTENSIONS_DIR", str(state_dir() / "torch_extensions"))
    env.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # see _dial: the head listens on the loopback only
    env.pop("RAY_ADDRESS", None)
    return env


def start_local_head(num_cpus: int | None = None, timeout: float = 120) -> ClusterInfo:
    """Start a Ray head bound to 127.0.0.1 as a daemon (own process session) and record it."""
    temp_dir = _temp_dir()
    temp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ray_bin = Path(sys.executable).with_name("ray")
    gcs_port = _free_port()
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", f"--port={gcs_port}",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--dashboard-port=0",
           f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus or default_num_cpus()}",
           "--disable-usage-stats", "--include-dashboard=true"]
    # Several heads may share a machine (users, test sessions): take free ports for every service
    # that otherwise has a fixed default (the job agent's 52365, the client server's 10001, ...).
    for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                 "runtime-env-agent-port", "ray-client-server-port"):
        cmd.append(f"--{flag}={_free_port()}")
    env = _head_env()
    # Code running on the head (Ray Train's placement-group cleaner, for one) finds "its" cluster by
    # RAY_ADDRESS, else by looking for GCS processes on the machine, and gives up when there are several.
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
    log = state_dir() / "ray_head.log"
    for attempt in range(3):
        with open(log, "wb") as out:
            try:
                proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, timeout=timeout)
            except subprocess.TimeoutExpired:  # `ray start` was killed; the services it started were not
                proc = subprocess.CompletedProcess(cmd, returncode=-9)
                out.write(f"\n`ray start` timed out after {timeout:g} s\n".encode())
        # Ray gives its raylet and dashboard fixed windows (~30 s) to come up: a machine busy with other
        # work can miss them. Clear what the failed start left and try again.
        if proc.returncode == 0:
            break
        _kill_processes_under(str(temp_dir))
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise ByzerError("could not start the embedded Ray head: " + " | ".join(tail) + f" (full log: {log})")
    address = (temp_dir / "ray_current_cluster").read_text().strip()
    dashboard_url = _dashboard_url(address)
    deadline = time.time() + timeout
    while not _alive(dashboard_url):
        if time.time() > deadline:
            raise ByzerError(f"the embedded Ray head started but its dashboard {dashboard_url} never answered")
        time.sleep(0.5)
    info = ClusterInfo(address=address, dashboard_url=dashboard_url, embedded=True, started=True)
    (state_dir() / HEAD_FILE).write_text(json.dumps(asdict(info) | {"temp_dir": str(temp_dir)}))
    return info


def _dashboard_url(address: str) -> str:
    """Ask the GCS where the dashboard is (ray.init on the driver would also tell, but costs more)."""
    use_auth_env()
    from ray._private.services import get_webui_url_from_internal_kv  # noqa: PLC0415

    _init_once(address)
    url = get_webui_url_from_internal_kv() or ""
    return url if url.startswith("http") else f"http://{url}"


def recorded_head() -> ClusterInfo | None:
    """The embedded head recorded in the state folder, if it is still alive."""
    path = state_dir() / HEAD_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    temp_dir = data.pop("temp_dir", None)
    info = ClusterInfo(**{**data, "started": False})
    if _alive(info.dashboard_url):
        return info
    # A dashboard slow to answer on a busy machine is not a dead head: while the head's GCS process
    # lives, ask again with more patience rather than start a second head beside it.
    for timeout in (10, 20, 30):
        if not (temp_dir and _processes_under(temp_dir, "gcs_server")):
            return None
        if _alive(info.dashboard_url, timeout=timeout):
            return info
    return None


def head_was_lost() -> bool:
    """True when a head was recorded but no longer answers (it died or the machine restarted)."""
    return (state_dir() / HEAD_FILE).exists() and recorded_head() is None


def _recorded_address() -> str | None:
    path = state_dir() / HEAD_FILE
    try:
        return json.loads(path.read_text()).get("address")
    except (OSError, ValueError):
        return None


def connect(address: str | None = None, num_cpus: int | None = None) -> ClusterInfo:
    """Connect this process to Ray, starting the embedded head when no address is configured."""
    import ray  # noqa: PLC0415

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        if not ray.is_initialized():
            ctx = ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            url = ctx.dashboard_url or ""
        else:
            url = ray.get_runtime_context().gcs_address
        return ClusterInfo(address=address, dashboard_url=url if url.startswith("http") else f"http://{url}",
                           embedded=False)
    use_auth_env()
    with _CONNECTING:  # threads of one process (a monitor's poll and a cell) connect one at a time
        info = recorded_head()
        if info is None:
            with _head_lock():  # processes too: two kernels finding no head start one between them
                info = recorded_head()
                if info is None:
                    lost = _recorded_address()  # a head was recorded but no longer answers
                    if ray.is_initialized():
                        ray.shutdown()
                    info = start_local_head(num_cpus=num_cpus)
                    if lost:
                        print(f"the embedded Ray head at {lost} had stopped; started a new one at "
                              f"{info.address}. Jobs that were running on it are LOST; each continues from "
                              f"its last checkpoint with %byzerllm resume NAME.", flush=True)
        _init_once(info.address)
    return info


_CONNECTING = threading.RLock()


@contextlib.contextmanager
def _head_lock():
    import fcntl  # noqa: PLC0415

    with open(state_dir() / "ray_head.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_local_head() -> None:
    """Stop the embedded head (tests, and `%byzerllm` users who want their memory back)."""
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        ray.shutdown()
    path = state_dir() / HEAD_FILE
    if not path.exists():
        return
    temp_dir = json.loads(path.read_text()).get("temp_dir")
    path.unlink(missing_ok=True)
    if temp_dir:
        _kill_processes_under(temp_dir)


def _processes_under(temp_dir: str, program: str = "") -> list:
    """The live processes of the head whose session lives in ``temp_dir`` (only ``program``'s, if given)."""
    import psutil  # noqa: PLC0415

    found = []
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if any(temp_dir in part for part in cmdline) and (
                    not program or program in (proc.info["name"] or "") or any(program in c for c in cmdline[:1])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _kill_processes_under(temp_dir: str, grace: float = 10) -> None:
    """End the processes of the head whose session lives in ``temp_dir`` (``ray stop`` would end
    every Ray on the machine, other users' and other heads' too)."""
    import psutil  # noqa: PLC0415

    ours = _processes_under(temp_dir)
    for proc in ours:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(ours, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
