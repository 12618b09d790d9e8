"""Submit a job's driver as a Ray Job (the Jobs API on the cluster's dashboard): what the driver
process gets (its entrypoint, environment and metadata), and the retry while a new head's job agent
starts. The one place a Ray Job is created (a new job and a resume)."""
from __future__ import annotations

import os
import shlex
import sys
import time

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import cluster
from byzer_magic.runtime.kernel.jobs import METADATA_KEY


def submit_ray_job(spec: dict, info: cluster.ClusterInfo) -> None:
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    python = sys.executable if info.embedded else "python"
    env = {k: v for k, v in os.environ.items() if k.startswith(("TORCH_EXTENSIONS_DIR", "NCCL_", "HF_"))}
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    # Ray Train's workers tee print() into its logger, which writes it again: each line twice in the log.
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    client = JobSubmissionClient(info.dashboard_url)
    deadline = time.time() + 90
    while True:
        try:
            client.submit_job(
                entrypoint=f"{shlex.quote(python)} -m byzer_magic.runtime.driver.entry {shlex.quote(spec['job_dir'])}",
                submission_id=spec["submission_id"],
                metadata={METADATA_KEY: "1", "name": spec["name"], "job_dir": spec["job_dir"]},
                runtime_env={"env_vars": env} if env else None)
            return
        except RuntimeError as err:
            # A head that has just started has no job agent for a few seconds.
            if "No available agent" not in str(err) or time.time() > deadline:
                if "already exists" in str(err):
                    raise ByzerError(f"the cluster already has a job named {spec['submission_id']!r}") from None
                raise
            time.sleep(2)


