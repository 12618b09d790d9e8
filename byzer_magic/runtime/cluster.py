"""Connect to Ray: an existing cluster (``RAY_ADDRESS`` or an explicit address), or the embedded
default, a local Ray head that byzer-magic starts itself as a daemon and reuses while it lives.

The embedded head binds its dashboard (and so the Jobs API) to 127.0.0.1 and turns on Ray's token
authentication with a token private to the user; every client we start gets ``RAY_AUTH_MODE=token``
and the token's path. Because the head is its own process session, detached jobs outlive the kernel.
Every process of the head carries its id in its environment, so ``stop_local_head`` ends them all. A
head that looks dead but whose GCS lives is reported, never replaced; a kernel whose head another
kernel replaced reconnects and says so. External clusters: runtime/remote.py.
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
from byzer_magic.runtime import processes
from byzer_magic.runtime.home import private_dir, state_dir
from byzer_magic.runtime.network import free_ports

HEAD_FILE = "ray_head.json"
HEAD_ID_VAR = processes.HEAD_ID_VAR


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

    global _attached
    if not ray.is_initialized():
        _dial(address)
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        _attached = address
        _watch_gcs(address)


def _watch_gcs(address: str, every: float = 3) -> None:
    """A Ray driver whose GCS is gone retries hard, and after a minute Ray ends its whole process:
    here that is the user's kernel. While this process is connected, a thread checks the GCS port;
    once it refuses twice in a row, it disconnects, so the next connect() says what happened and
    reconnects (a frozen GCS still accepts connections: it is not taken for a dead one)."""
    host, _, port = address.rpartition(":")

    def watch() -> None:
        import ray  # noqa: PLC0415

        misses = 0
        while misses < 2:
            time.sleep(every)
            if not ray.is_initialized() or _attached != address:
                return
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
                misses = 0
            except OSError:
                misses += 1
        with _CONNECTING:
            if ray.is_initialized() and _attached == address:
                ray.shutdown()

    threading.Thread(target=watch, name="byzer-magic-gcs-watch", daemon=True).start()


_attached: str | None = None  # the embedded head this process connected to (kept when the watch disconnects)
_remote: ClusterInfo | None = None  # the external cluster this process is connected to


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


_SERVICE_PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                       "runtime-env-agent-port", "ray-client-server-port")


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
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "180")  # Ray's 60 s: too short on a busy laptop
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # see _dial: the head listens on the loopback only
    env.pop("RAY_ADDRESS", None)
    return env


def cpu_slots() -> int:
    """The connected cluster's CPU slots for CPU-bound tasks, counting this node's as at most its cores:
    the embedded head has more slots than cores (``default_num_cpus``), and tokenising tasks beyond the
    cores slow each other (a 256 MB corpus on 2 cores: 4.2M tokens/s with 8 slots, 5.3M with 2)."""
    import ray  # noqa: PLC0415

    here = ray.get_runtime_context().get_node_id()
    slots = 0.0
    for node in ray.nodes():
        if node.get("Alive"):
            cpus = node.get("Resources", {}).get("CPU", 0)
            slots += min(cpus, os.cpu_count() or 1) if node["NodeID"] == here else cpus
    return max(1, int(slots))


def start_local_head(num_cpus: int | None = None, timeout: float = 120) -> ClusterInfo:
    """Start a Ray head bound to 127.0.0.1 as a daemon (own process session) and record it."""
    temp_dir = private_dir(_temp_dir())  # in /tmp it must not be a folder another user planted
    ray_bin = Path(sys.executable).with_name("ray")
    env = _head_env()
    head_id = secrets.token_hex(8)
    env[HEAD_ID_VAR] = head_id  # inherited by every process of the head: how stop_local_head finds them
    log = state_dir() / "ray_head.log"
    for _ in range(3):
        # Several heads may share a machine (users, test sessions): free ports for the GCS and every
        # service that otherwise has a fixed default (the job agent's 52365, the client server's 10001,
        # ...), all different, and new ones for each attempt.
        gcs_port, *ports = free_ports(6)
        cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", f"--port={gcs_port}",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--dashboard-port=0",
               f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus or default_num_cpus()}",
               "--disable-usage-stats", "--include-dashboard=true"]
        cmd += [f"--{flag}={port}" for flag, port in zip(_SERVICE_PORT_FLAGS, ports)]
        # Code running on the head (Ray Train's placement-group cleaner, for one) finds "its" cluster by
        # RAY_ADDRESS, else by looking for GCS processes on the machine, and gives up when there are several.
        env["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
        with open(log, "wb") as out:
            # Its own session (so detached jobs outlive the kernel): its daemons keep that session id.
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # `ray start` is killed; the services it started are not
                proc.kill()
                proc.wait()
                out.write(f"\n`ray start` timed out after {timeout:g} s\n".encode())
        # Ray gives its raylet and dashboard fixed windows (~30 s) to come up: a machine busy with other
        # work can miss them. Clear what the failed start left and try again.
        if proc.returncode == 0:
            break
        processes.kill_head({"temp_dir": str(temp_dir), "head_id": head_id, "sid": proc.pid})
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
    (state_dir() / HEAD_FILE).write_text(json.dumps(
        asdict(info) | {"temp_dir": str(temp_dir), "head_id": head_id, "sid": proc.pid}))
    return info


def _dashboard_url(address: str) -> str:
    """Ask the GCS where the dashboard is (ray.init on the driver would also tell, but costs more)."""
    use_auth_env()
    from ray._private.services import get_webui_url_from_internal_kv  # noqa: PLC0415

    _init_once(address)
    url = get_webui_url_from_internal_kv() or ""
    return url if url.startswith("http") else f"http://{url}"


def _read_record() -> dict | None:
    try:
        return json.loads((state_dir() / HEAD_FILE).read_text())
    except (OSError, ValueError):
        return None


UNRESPONSIVE_PATIENCE = 60.0  # seconds a head whose GCS lives is asked before connect() gives up on it


def recorded_head(patience: float | None = None) -> ClusterInfo | None:
    """The embedded head recorded in the state folder if it is alive, None if it is gone. A head whose
    GCS lives while its dashboard does not answer (overloaded, or the dashboard crashed) is neither:
    after ``patience`` seconds of asking, a ByzerError says what is wrong. Never None for it: a second
    head beside it would let two trainings write one job folder."""
    record = _read_record()
    if record is None:
        return None
    info = ClusterInfo(address=record["address"], dashboard_url=record["dashboard_url"], embedded=True)
    if _alive(info.dashboard_url):
        return info
    patience = UNRESPONSIVE_PATIENCE if patience is None else patience
    deadline, timeout = time.time() + patience, 5.0
    while gcs := head_processes(record, "gcs_server"):
        if _alive(info.dashboard_url, timeout=max(1.0, min(timeout, deadline - time.time()))):
            return info
        if time.time() >= deadline:
            raise ByzerError(_unresponsive(info, record, gcs[0].pid, patience))
        timeout *= 2
    return None


def _unresponsive(info: ClusterInfo, record: dict, gcs_pid: int, patience: float) -> str:
    dashboard = head_processes(record, "dashboard.py")
    what = (f"its dashboard process (pid {dashboard[0].pid}) lives but has not answered for {patience:g} s "
            f"(overloaded, or frozen)" if dashboard else
            f"its dashboard process has exited (crashed: see {record.get('temp_dir')}/session_latest/logs/dashboard.log)")
    return (f"the embedded Ray head at {info.address} still runs (its GCS, pid {gcs_pid}, is alive), but "
            f"{what}; without it jobs can be neither submitted nor watched. byzer-magic does not start a second "
            f"head beside it: its jobs may still be training. Run the cell again later, or stop that head with "
            f"byzer_magic.runtime.cluster.stop_local_head() (jobs running on it become LOST; each resumes "
            f"from its last checkpoint with %byzerllm resume NAME).")


def connect(address: str | None = None, num_cpus: int | None = None) -> ClusterInfo:
    """Connect this process to Ray: the cluster at ``address`` (or ``RAY_ADDRESS``, or the one this
    process connected to last; see runtime/remote.py for the forms), else the embedded head, started
    when none lives."""
    import ray  # noqa: PLC0415

    global _attached
    address = address or os.environ.get("RAY_ADDRESS") or None
    with _CONNECTING:  # threads of one process (a monitor's poll and a cell) connect one at a time
        if address or _remote is not None:
            return _connect_remote(address)
        use_auth_env()
        info = recorded_head()
        if info is None:
            with _head_lock():  # processes too: two kernels finding no head start one between them
                info = recorded_head()
                if info is None:
                    # recorded but no longer answering, or (its record removed) the one this process used
                    lost = (_read_record() or {}).get("address") or _attached
                    if ray.is_initialized():
                        ray.shutdown()
                    _attached = None
                    info = start_local_head(num_cpus=num_cpus)
                    if lost:
                        print(f"the embedded Ray head at {lost} had stopped; started a new one at "
                              f"{info.address}. Jobs that were running on it are LOST; each continues from "
                              f"its last checkpoint with %byzerllm resume NAME.", flush=True)
        if _attached and _attached != info.address:
            print(f"the embedded Ray head at {_attached} was replaced by another kernel's, at {info.address}; "
                  f"reconnected to it. Jobs that were running on {_attached} are LOST; each continues from its "
                  f"last checkpoint with %byzerllm resume NAME.", flush=True)
            if ray.is_initialized():
                ray.shutdown()
        _init_once(info.address)
    return info


def _connect_remote(address: str | None) -> ClusterInfo:
    global _remote, _remote_requested, _attached
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        if _remote is not None and address in (None, _remote_requested):
            return _remote
        if _remote is None and _attached is None:  # connected by its own code (a job's driver): keep it
            from ray._private.services import get_webui_url_from_internal_kv  # noqa: PLC0415

            url = get_webui_url_from_internal_kv() or ""
            return ClusterInfo(address=address or ray.get_runtime_context().gcs_address, embedded=False,
                               dashboard_url=url if url.startswith("http") else f"http://{url}")
        ray.shutdown()
    from byzer_magic.runtime import remote  # noqa: PLC0415

    address = address or _remote_requested
    target, url = remote.connect(address, _dial)
    _remote, _remote_requested, _attached = ClusterInfo(address=target, dashboard_url=url, embedded=False), address, None
    return _remote


_CONNECTING = threading.RLock()
_remote_requested: str | None = None


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
    """Stop the embedded head and end every process it started: its services, the dashboard and
    runtime-env agents, its workers and the jobs' drivers (tests, and users who want their memory back)."""
    import ray  # noqa: PLC0415

    global _attached
    if _remote is None:
        if ray.is_initialized():
            ray.shutdown()
        _attached = None
    record = _read_record()
    (state_dir() / HEAD_FILE).unlink(missing_ok=True)
    if record:
        processes.kill_head(record)


def head_processes(record: dict | None = None, program: str = "") -> list:
    """The live processes of the embedded head (default: the recorded one): runtime/processes.py."""
    return processes.head_processes(record if record is not None else (_read_record() or {}), program)
