"""A real two-node Ray cluster on this machine for tests of remote clusters: a head and a second
``ray start`` node with token authentication, each in its own temp dir. Like any multi-node cluster
its nodes use the machine's routable address (Ray refuses a second node on a loopback-only head);
the dashboard, where jobs are submitted, listens on 127.0.0.1.

The nodes run a Python environment of their own in which byzer-magic is *not* installed: a venv whose
site-packages links, one by one, every package of the test's venv except byzer-magic (its editable
hook included) and the packages the test names, so a job has to ship those itself. The nodes also run
from a working directory outside the repository. Optionally the second node runs in a mount namespace
of its own with an empty tmpfs over one folder: the same path there is another folder, as on a node
that does not mount the shared storage.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import psutil

from byzer_magic.runtime.network import free_ports

MARK = "BYZER_MAGIC_TEST_CLUSTER"


def node_python(root: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """The nodes' Python: a venv linking this venv's packages except byzer-magic and ``leave_out``."""
    venv = root / "node-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    skip = ("byzer_magic", "__editable__", "_byzer_magic", *leave_out)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(skip) and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    return venv / "bin" / "python"


def can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True).returncode == 0


class TwoNodes:
    """``start()`` brings up the head and the second node; ``stop()`` ends every process of both."""

    def __init__(self, root: Path, python: Path, token_path: Path, hidden: Path | None = None):
        self.root, self.python, self.token_path, self.hidden = root, python, token_path, hidden
        self.id = secrets.token_hex(6)
        self.temp = Path("/tmp") / f"bm-2n-{self.id}"  # short: Ray's socket paths live under it
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.gcs = self.client = ""  # known once the head runs (its node's address)

    def _env(self) -> dict[str, str]:
        keep = ("HOME", "LANG", "LC_ALL", "TORCH_EXTENSIONS_DIR", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
        return env | {"PATH": f"{self.python.parent}:/usr/local/bin:/usr/bin:/bin", MARK: self.id,
                      "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                      "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_TRAIN_V2_ENABLED": "1",
                      "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "180"}  # a busy machine starts it slowly

    def _start(self, args: list[str], temp: str, namespace: bool = False) -> None:
        log = self.root / f"ray-start-{temp}.log"
        for _ in range(3):  # Ray gives its agents ~15 s to start: a busy machine can miss that; try again
            cmd = [str(self.python), "-m", "ray.scripts.scripts", "start",
                   "--num-cpus=1", f"--temp-dir={self.temp / temp}", "--disable-usage-stats", *args]
            flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                     "runtime-env-agent-port")
            taken = (self.gcs_port, self.dashboard_port, self.client_port)
            ports = [p for p in free_ports(len(flags) + len(taken)) if p not in taken][:len(flags)]
            cmd += [f"--{flag}={port}" for flag, port in zip(flags, ports)]
            if namespace:  # the node's view of ``hidden`` is an empty tmpfs: it cannot see the shared folder
                cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(self.hidden), *cmd]
            with open(log, "wb") as out:
                code = subprocess.run(cmd, env=self._env(), cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=180).returncode
            if code == 0:
                return
            self._kill(str(self.temp / temp) + "/")
        raise AssertionError(f"ray start ({temp}) failed 3 times:\n{log.read_text()[-3000:]}")

    def start(self) -> None:
        self._start(["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                     f"--ray-client-server-port={self.client_port}"], "head")
        head_ip = self.nodes()[0]["node_ip"]
        self.gcs, self.client = f"{head_ip}:{self.gcs_port}", f"ray://{head_ip}:{self.client_port}"
        self._start([f"--address={self.gcs}"], "node", namespace=self.hidden is not None)
        deadline = time.time() + 120
        while len(self.nodes()) < 2:
            assert time.time() < deadline, f"the second node never joined: {self.nodes()}"
            time.sleep(1)

    def nodes(self) -> list[dict]:
        """The alive nodes, as the dashboard's state API lists them."""
        token = self.token_path.read_text().strip()
        request = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?detail=1",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                listed = json.load(response)["data"]["result"]["result"]
        except OSError:
            return []
        return [n for n in listed if n["state"] == "ALIVE"]

    def processes(self, under: str = "") -> list:
        """The cluster's processes (``under`` a temp dir only, if given)."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if (under in cmdline) if under else (str(self.temp) in cmdline or proc.environ().get(MARK) == self.id):
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    def _kill(self, under: str = "") -> None:
        for _ in range(3):
            procs = self.processes(under)
            for proc in procs:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self.temp, ignore_errors=True)
