"""The user document's last line, as written: ``ray.get([w.train.remote() for w in dst.workers])``.

``dst.workers`` stands for the run's training workers. The first ``train.remote()`` submits the job
(``DeepSpeedTrain.submit``: the same path as ``train()``); each call returns a Ray object that resolves,
when the job has ended, to the run's result row (a ``RuntimeError`` naming the job if it did not
succeed). The Ray task that waits only reads the job folder's ``result.json``.
"""
from __future__ import annotations

import time


class SeedWorker:
    """Worker ``rank`` of ``dst``: ``.train.remote()`` as the seed calls it."""

    def __init__(self, dst, rank: int):
        self.dst, self.rank = dst, rank
        self.train = _Train(dst)


class _Train:
    def __init__(self, dst):
        self.dst = dst

    def remote(self):
        import ray  # noqa: PLC0415

        handle = self.dst.submitted()
        return ray.remote(num_cpus=0)(_wait_for_result).remote(str(handle.job_dir), handle.submission_id)


def _wait_for_result(job_dir: str, submission_id: str, poll: float = 1.0) -> dict:
    from byzer_magic.runtime.jobfiles import JobFiles  # noqa: PLC0415

    files = JobFiles(job_dir)
    while True:
        result = files.read_json("result.json")
        if result and result.get("submission_id") == submission_id:
            if result.get("status") != "SUCCEEDED":
                raise RuntimeError(f"job {result.get('name')} {str(result.get('status')).lower()}: {result.get('error')}")
            return result
        time.sleep(poll)
