"""Before a job is submitted to a remote cluster: one Ray task on every alive node checks that the node
reads and writes the job folder (the storage every worker shares: checkpoints, token cache, metrics)
and which of byzer-magic's job-side requirements its Python lacks (those are shipped with the job's
``runtime_env.pip``; see ``runtime/kernel/ray_job.py``).

The task is sent by value (this module imports only the standard library at its top), so a node
without byzer-magic, or without its requirements, still runs it and says what it lacks.
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from byzer_magic.errors import ByzerError

# Needed only in the notebook kernel (never by the job's driver or workers); ray is the cluster's own.
KERNEL_ONLY = {"ipython", "ipywidgets", "jupyterlab", "jupyter-server-proxy", "traitlets", "lark", "ray"}
PROBE_DIR = ".preflight"


@dataclass
class NodeReport:
    node_id: str
    ip: str
    host: str = "?"
    storage_error: str | None = None       # why the node cannot read or write the job folder
    missing: list[str] = field(default_factory=list)  # requirements to ship through pip

    def describe(self) -> str:
        return f"node {self.ip} (host {self.host}, id {self.node_id[:12]})"


def job_requirements() -> list[str]:
    """byzer-magic's own requirements that a job's driver and workers import (extras and the
    kernel-only ones left out), as written in its package metadata (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, requires  # noqa: PLC0415

    from packaging.requirements import Requirement  # noqa: PLC0415

    try:
        listed = requires("byzer-magic") or []
    except PackageNotFoundError:
        return []
    out = []
    for line in listed:
        req = Requirement(line)
        if req.marker is not None and ("extra" in str(req.marker) or not req.marker.evaluate()):
            continue
        if req.name.lower() not in KERNEL_ONLY:
            out.append(str(req))
    return out


def _node_check(job_dir: str, token: str, requirements: list[str]) -> dict:
    """Runs on one node: read the kernel's probe, write this node's answer, list missing packages."""
    import socket  # noqa: PLC0415
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    import ray  # noqa: PLC0415
    from packaging.requirements import Requirement  # noqa: PLC0415

    node_id = ray.get_runtime_context().get_node_id()
    report = {"node_id": node_id, "ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
              "storage_error": None, "missing": []}
    probe = Path(job_dir) / PROBE_DIR
    try:
        seen = (probe / "kernel").read_text()
        if seen != token:
            raise OSError(f"{probe / 'kernel'} holds another probe than the kernel wrote: this node's "
                          f"{job_dir} is a different folder")
        (probe / node_id).write_text(token)
    except OSError as err:
        report["storage_error"] = f"{type(err).__name__}: {err}"
    for line in requirements:
        req = Requirement(line)
        try:
            if req.specifier and not req.specifier.contains(version(req.name), prereleases=True):
                report["missing"].append(line)
        except PackageNotFoundError:
            report["missing"].append(line)
    return report


def check_nodes(job_dir: str | os.PathLike, *, timeout: float = 120) -> list[NodeReport]:
    """Run the check on every alive node of the connected cluster; a ByzerError naming each node that
    cannot read or write ``job_dir`` (or did not answer). Returns the nodes' reports."""
    import sys  # noqa: PLC0415

    import ray  # noqa: PLC0415
    from ray import cloudpickle  # noqa: PLC0415
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: PLC0415

    job_dir = str(job_dir)
    probe = Path(job_dir) / PROBE_DIR
    probe.mkdir(exist_ok=True)
    token = secrets.token_hex(16)
    (probe / "kernel").write_text(token)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_node_check)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        requirements = job_requirements()
        refs = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(job_dir, token, requirements): n for n in nodes}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        reports, problems = [], []
        for ref, node in refs.items():
            report = NodeReport(node_id=node["NodeID"], ip=node.get("NodeManagerAddress", "?"))
            if ref not in ready:
                report.storage_error = f"did not answer the pre-flight check in {timeout:g} s"
            else:
                try:
                    report = NodeReport(**ray.get(ref))
                except Exception as err:  # noqa: BLE001 - reported with the node it happened on
                    report.storage_error = f"the pre-flight task failed: {type(err).__name__}: {err}"
            if report.storage_error is None:
                try:
                    if (probe / report.node_id).read_text() != token:
                        raise OSError("its answer differs")
                except OSError:
                    report.storage_error = (f"wrote {probe / report.node_id}, but this kernel does not see it: "
                                            f"the node's {job_dir} is a different folder")
            if report.storage_error:
                problems.append(f"{report.describe()} cannot use the job folder: {report.storage_error}")
            reports.append(report)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        shutil.rmtree(probe, ignore_errors=True)
    if problems:
        raise ByzerError(f"the job folder {job_dir} is not shared storage every node reaches at that path "
                         f"(checkpoints and the token cache live there): " + "; ".join(problems)
                         + ". Set localPathPrefix to a shared file system (NFS, ...) mounted on every node")
    return reports


def missing_requirements(reports: list[NodeReport]) -> list[str]:
    """What any node lacks, in byzer-magic's order, each once."""
    wanted = set().union(*(r.missing for r in reports)) if reports else set()
    return [req for req in job_requirements() if req in wanted]

