"""Connect the kernel to a Ray cluster byzer-magic did not start (``RAY_ADDRESS`` or
``%config ByzerMagic.ray_address``), in any of the three forms Ray's documentation uses:

- ``ray://host:10001``: Ray Client;
- ``host:6379``: the cluster's GCS (what ``ray start --address`` takes);
- ``http://host:8265``: the dashboard, i.e. the Jobs API. The kernel also runs Ray tasks (tables, the
  pre-flight check), so it asks the cluster for its GCS address: a tiny Ray Job prints the
  ``RAY_ADDRESS`` that Ray gives every job's entrypoint.

The kernel's connection ships byzer-magic itself (``runtime_env.py_modules``), so its tasks run on
nodes without it; jobs ship it too (``runtime/kernel/ray_job.py``). Authentication is the user's: a
token-authenticated cluster needs ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (or
``RAY_AUTH_TOKEN``) in the kernel's environment, as for Ray's own CLI.
"""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from byzer_magic.errors import ByzerError

_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>\d{1,5})")
FORMS = "ray://host:10001 (Ray Client), host:6379 (the GCS) or http://host:8265 (the dashboard / Jobs API)"


@dataclass(frozen=True)
class Address:
    kind: str   # "client", "gcs" or "dashboard"
    value: str  # what ray.init (client, gcs) or JobSubmissionClient (dashboard) takes
    host: str


def parse_address(address: str) -> Address:
    """One of the three forms, checked; a ByzerError listing them otherwise."""
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    scheme = scheme.lower()
    match = _HOST_PORT.fullmatch(rest.rstrip("/"))
    if scheme not in ("", "ray", "http", "https") or not match or not 0 < int(match["port"]) < 65536:
        hint = ""
        if scheme and scheme not in ("ray", "http", "https"):
            from byzer_magic.errors import did_you_mean  # noqa: PLC0415

            hint = did_you_mean(scheme, ["ray", "http", "https"])
        elif not match:
            hint = " (a host and a port are needed, e.g. 10.0.0.5:6379)"
        else:
            hint = f" (port {match['port']}: a port is 1-65535)"
        raise ByzerError(f"invalid Ray address {address!r}{hint}: use {FORMS}")
    host, port = match["host"], match["port"]
    if scheme == "ray":
        return Address("client", f"ray://{host}:{port}", host)
    if scheme in ("http", "https"):
        return Address("dashboard", f"{scheme}://{host}:{port}", host)
    return Address("gcs", f"{host}:{port}", host)


def kernel_runtime_env() -> dict:
    """The runtime_env of the kernel's connection (and part of every job's): byzer-magic itself."""
    import byzer_magic  # noqa: PLC0415

    return {"py_modules": [str(Path(byzer_magic.__file__).parent)], "excludes": ["__pycache__", "*.pyc"]}


def _auth_headers() -> dict[str, str]:
    from ray._private.authentication.http_token_authentication import (  # noqa: PLC0415
        get_auth_headers_if_auth_enabled)

    return get_auth_headers_if_auth_enabled({})


def submit_job(client, *, agent_wait: float = 90, **job) -> str:
    """``client.submit_job(**job)``, waiting up to ``agent_wait`` seconds for a head that has just
    started: its Jobs API answers "No available agent" until its job agent has registered."""
    deadline = time.time() + agent_wait
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(2)


def gcs_from_dashboard(url: str, timeout: float = 120) -> str:
    """The GCS address of the cluster whose Jobs API is at ``url``: a Ray Job prints the RAY_ADDRESS
    Ray gives its entrypoint (then it is deleted). A loopback answer is replaced by ``url``'s host."""
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    try:
        client = JobSubmissionClient(url)
        job = submit_job(client, entrypoint='echo "byzer-magic-gcs=$RAY_ADDRESS"',
                         submission_id=f"byzer-magic-address-{uuid.uuid4().hex[:8]}")
    except Exception as err:  # noqa: BLE001 - Ray raises several kinds here; each means "no Jobs API"
        raise ByzerError(f"no Ray Jobs API answers at {url}: {err}") from None
    deadline = time.time() + timeout
    while not client.get_job_status(job).is_terminal():
        if time.time() > deadline:
            raise ByzerError(f"the Ray cluster at {url} did not run a one-line job in {timeout:g} s")
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    client.delete_job(job)
    gcs = reported_gcs(logs)
    if gcs is None:
        raise ByzerError(f"the Ray cluster at {url} did not report its GCS address (job log: {logs[-300:]!r})")
    host = parse_address(url).host
    gcs_host, _, port = gcs.rpartition(":")
    if gcs_host in ("127.0.0.1", "localhost") and host not in ("127.0.0.1", "localhost"):
        gcs = f"{host}:{port}"
    return gcs


def reported_gcs(logs: str) -> str | None:
    """The address the one-line job printed. Its log also holds Ray's "Running entrypoint for job ...:
    echo ..." line, the variable unexpanded, written before or after the job's output."""
    found = re.findall(r"byzer-magic-gcs=([^\s\"$]+:\d+)", logs)
    return found[-1] if found else None


def connect(address: str, dial) -> tuple[str, str]:
    """``ray.init`` this process to the cluster at ``address`` (any form); returns (the address it
    connected with, the dashboard URL). ``dial(gcs_address)`` prepares a GCS connection (cluster.py)."""
    import ray  # noqa: PLC0415

    parsed = parse_address(address)
    env = kernel_runtime_env()
    dashboard = parsed.value if parsed.kind == "dashboard" else None
    target = gcs_from_dashboard(parsed.value) if parsed.kind == "dashboard" else parsed.value
    if parsed.kind != "client":
        dial(target)
    try:
        ctx = ray.init(address=target, runtime_env=env, logging_level="ERROR", log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - ConnectionError, TimeoutError, RuntimeError, ...
        via = f" (the GCS address its dashboard {dashboard} reported)" if dashboard else ""
        raise ByzerError(f"could not connect to the Ray cluster at {target}{via}: {err}. The kernel needs the "
                         f"GCS port (or Ray Client's) as well as the dashboard; use {FORMS}") from None
    if dashboard is None:
        url = getattr(ctx, "dashboard_url", None) or ""
        if not url and parsed.kind == "gcs":
            from ray._private.services import get_webui_url_from_internal_kv  # noqa: PLC0415

            url = get_webui_url_from_internal_kv() or ""
        if not url:
            raise ByzerError(f"the Ray cluster at {target} has no dashboard: jobs are submitted through its "
                             f"Jobs API (start the head with ray[default] and --include-dashboard=true)")
        dashboard = _reachable_dashboard(url if url.startswith("http") else f"http://{url}", parsed.host)
    return target, dashboard.rstrip("/")


def _answers(url: str) -> bool:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/version", headers=_auth_headers()),
                                    timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise ByzerError(f"the Ray dashboard at {url} refused this kernel ({err.code}: it uses token "
                             f"authentication): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) "
                             f"in the kernel's environment") from None
        return False
    except OSError:
        return False


def _reachable_dashboard(url: str, head_host: str) -> str:
    """The dashboard URL the cluster reports, as this kernel reaches it: a head's loopback address is
    tried as it is (the kernel may run on the head) and then at the host the kernel dialled."""
    scheme, _, rest = url.rstrip("/").partition("://")
    host, _, port = rest.rpartition(":")
    tries = [url.rstrip("/")]
    if host in ("127.0.0.1", "localhost", "0.0.0.0") and head_host not in ("127.0.0.1", "localhost"):
        tries.append(f"{scheme}://{head_host}:{port}")
    for candidate in tries:
        if _answers(candidate):
            return candidate
    raise ByzerError(f"the Ray cluster's dashboard ({url}) does not answer from here: jobs are submitted through "
                     f"it. Start the head with --dashboard-host=0.0.0.0, or give its reachable address: "
                     f"http://<head>:{port or 8265}")
