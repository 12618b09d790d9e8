"""Submit a job's driver as a Ray Job (the Jobs API on the cluster's dashboard): what the driver
process gets (its entrypoint, environment and metadata), and the retry while a new head's job agent
starts (remote.submit_job). The one place a Ray Job is created (a new job and a resume).

On the embedded head the driver runs this kernel's Python, where byzer-magic is installed. On any
other cluster the job ships byzer-magic itself (``runtime_env.py_modules``) and, through
``runtime_env.pip``, those of its requirements that some node lacks; before that a pre-flight task on
every node checks it shares the job folder (runtime/preflight.py). Secrets never enter the job's
metadata or runtime_env (runtime/job_env.py).
"""
from __future__ import annotations

import shlex
import sys

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import cluster, job_env, remote
from byzer_magic.runtime.kernel.jobs import METADATA_KEY
from byzer_magic.runtime.spec import JobSection


def runtime_env_for(job_dir: str, info: cluster.ClusterInfo) -> tuple[str, dict]:
    """The job's entrypoint and runtime_env; writes its secrets file. Runs the pre-flight check on a
    cluster byzer-magic did not start (a ByzerError names each node that cannot use the job folder)."""
    env, secrets = job_env.split_env()
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    # Ray Train's workers tee print() into its logger, which writes it again: each line twice in the log.
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    runtime_env: dict = {"env_vars": env}
    python = sys.executable
    if not info.embedded:
        from byzer_magic.runtime import preflight, remote  # noqa: PLC0415

        reports = preflight.check_nodes(job_dir)
        runtime_env.update(remote.kernel_runtime_env())
        missing = preflight.missing_requirements(reports)
        if missing:
            runtime_env["pip"] = missing
        python = "python"  # the node's own (or, with pip, the job's virtualenv's)
    job_env.write_secrets(job_dir, secrets)
    entrypoint = f"{shlex.quote(python)} -m byzer_magic.runtime.job_env {shlex.quote(job_dir)}"
    return entrypoint, runtime_env


def submit_ray_job(job: JobSection, info: cluster.ClusterInfo) -> None:
    """Submit the job's driver (``job.submission_id``) to the cluster's Jobs API."""
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    entrypoint, runtime_env = runtime_env_for(job.job_dir, info)
    client = JobSubmissionClient(info.dashboard_url)
    try:
        remote.submit_job(client, entrypoint=entrypoint, submission_id=job.submission_id,
                          metadata={METADATA_KEY: "1", "name": job.name, "job_dir": job.job_dir},
                          runtime_env=runtime_env)
    except RuntimeError as err:
        if "already exists" in str(err):
            raise ByzerError(f"the cluster already has a job named {job.submission_id!r}") from None
        raise
