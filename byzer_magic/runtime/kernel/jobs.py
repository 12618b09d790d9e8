"""The job API that the magics, the widgets and users share (Ray's job SDK is the model: narrow verbs).

A job is a Ray Job (``submission_id`` = the job's name, resumes add ``-r<k>``) plus its folder. The folder
is the truth for what a job produced (metrics, checkpoints, model, result); Ray is the truth for whether
it is still running. A job whose folder exists but which Ray no longer knows (the head was restarted)
is ``LOST``, with its last checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime.home import default_jobs_dir
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.spec import JobLayout, JobSpec
from byzer_magic.runtime.worker.metrics import read_metrics

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED", "LOST")
METADATA_KEY = "byzer_magic"


def _client():
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    from byzer_magic.runtime import cluster  # noqa: PLC0415

    return JobSubmissionClient(cluster.connect().dashboard_url)


class JobHandle:
    """One training job. Cheap to create; every method reads the current state."""

    def __init__(self, name: str, job_dir: str | Path, submission_id: str | None = None):
        self.name = name
        self.files = JobFiles(job_dir)
        spec = self.spec
        self.submission_id = submission_id or (spec.job.submission_id if spec else name)

    def __repr__(self) -> str:
        return f"JobHandle({self.name!r}, status={self.status()!r}, job_dir='{self.files.root}')"

    job_dir = property(lambda self: self.files.root)
    model_dir = property(lambda self: self.files.model_dir)
    @property
    def checkpoint_dir(self) -> Path:
        spec = self.spec
        return spec.checkpoint_dir if spec else self.files.checkpoint_dir

    tensorboard_dir = property(lambda self: self.files.tensorboard_dir)

    @property
    def spec(self) -> JobSpec | None:
        """The job's configuration (``job.json``), None when the folder has none."""
        raw = self.files.read_json("job.json")
        return JobSpec.from_json(raw) if raw else None

    @property
    def layout(self) -> JobLayout | None:
        """How the driver laid out the run (``plan.json``), None until it has."""
        raw = self.files.read_json("plan.json")
        return JobLayout.from_json(raw) if raw else None

    @property
    def total_steps(self) -> int | None:
        layout = self.layout
        return layout.total_steps if layout else None

    @property
    def last_checkpoint(self) -> Path | None:
        """The complete checkpoint a resume would continue from (None: there is none yet)."""
        from byzer_magic.runtime.worker.checkpoint import latest_tag  # noqa: PLC0415

        tag = latest_tag(self.checkpoint_dir)
        return self.checkpoint_dir / tag if tag else None

    def workers(self) -> dict[int, dict]:
        """``{rank: {"host", "pid", "started", ...}}`` of the current attempt's worker group, as each
        worker recorded itself when it started (a restarted group replaces the records)."""
        found = {}
        for path in sorted(self.files.workers_dir.glob("rank-*.json")):
            record = self.files.read_json(f"workers/{path.name}")
            if record and record.get("submission_id") == self.submission_id:
                found[int(record["rank"])] = record
        return found

    def ray_job_id(self) -> str | None:
        """Ray's id of the running attempt's driver (what its actors are filed under), if Ray knows it."""
        try:
            return _client().get_job_info(self.submission_id).job_id
        except Exception:
            return None

    def _ray_status(self) -> str | None:
        try:
            return str(_client().get_job_status(self.submission_id).value)
        except Exception:  # Ray does not know the job (another head), or the head is gone
            return None

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, or LOST (the cluster that ran it is gone)."""
        ray_status = self._ray_status()
        result = self.files.read_json("result.json")
        if ray_status in ("PENDING", "RUNNING"):
            return ray_status
        if result and result.get("submission_id", self.submission_id) == self.submission_id:
            if ray_status == "STOPPED":
                return "STOPPED"
            return result["status"]
        return ray_status or "LOST"

    def wait(self, timeout: float | None = None, *, poll: float = 1.0,
             progress: Callable[["JobHandle"], None] | None = None) -> str:
        """Block until the job ends (or ``timeout`` seconds); returns its status then."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            status = self.status()
            if progress:
                progress(self)
            if status in TERMINAL or (deadline and time.time() > deadline):
                return status
            time.sleep(poll)

    def metrics(self):
        """Logged steps so far: a DataFrame with step, loss, lr, grad_norm, tokens_per_s, ..."""
        return read_metrics(self.files.root)

    def logs(self, tail: int | None = None) -> str:
        """The job's log (driver and workers); the last ``tail`` lines when given."""
        try:
            text = _client().get_job_logs(self.submission_id)
        except Exception:
            text = ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    def stop(self, timeout: float = 60) -> str:
        """Stop the job and its workers; checkpoints stay. Returns the status once it has ended and
        Ray has freed its actors and placement groups (or ``timeout`` seconds have passed)."""
        from byzer_magic.runtime.kernel import cleanup  # noqa: PLC0415

        deadline = time.time() + timeout
        ray_job_id = self.ray_job_id()
        try:
            _client().stop_job(self.submission_id)
        except Exception:
            return self.status()
        status = self.wait(timeout=timeout, poll=0.5)
        if ray_job_id and status in TERMINAL:
            try:
                cleanup.wait_released(ray_job_id, timeout=max(5.0, deadline - time.time()))
            except Exception:  # the state API is a check, never a reason for stop to fail
                pass
        return status

    def result(self) -> dict:
        """The run's row (outputTable): name, status, model_dir, checkpoint_dir, tensorboard_dir, steps,
        final_loss."""
        result = self.files.read_json("result.json") or {}
        metrics = self.metrics()
        last = metrics.iloc[-1] if len(metrics) else None
        return {"name": self.name, "status": self.status(), "model_dir": str(self.model_dir),
                "checkpoint_dir": str(self.checkpoint_dir), "tensorboard_dir": str(self.tensorboard_dir),
                "steps": int(result.get("steps") or (last["step"] if last is not None else 0)),
                "final_loss": result.get("final_loss", None if last is None else float(last["loss"]))}

    def _submitted_at(self) -> str | None:
        spec = self.spec
        return spec.job.submitted_at if spec else None

    def summary(self) -> dict:
        """One row of ``%byzerllm jobs``."""
        metrics = self.metrics()
        last = metrics.iloc[-1] if len(metrics) else None
        return {"name": self.name, "status": self.status(), "started": self._submitted_at(),
                "steps": f"{0 if last is None else int(last['step'])}/{self.total_steps or '?'}",
                "last_loss": None if last is None else round(float(last["loss"]), 4),
                "tokens_per_s": None if last is None or "tokens_per_s" not in last else
                round(float(last["tokens_per_s"]), 1)}


def list_jobs(jobs_dir: str | Path | None = None) -> list[JobHandle]:
    """Jobs the cluster knows (with their folders), and job folders under ``jobs_dir`` it does not."""
    found: dict[str, JobHandle] = {}
    try:
        for info in _client().list_jobs():
            meta = info.metadata or {}
            if meta.get(METADATA_KEY) and meta.get("job_dir"):
                found[meta["name"]] = JobHandle(meta["name"], meta["job_dir"])
    except Exception:
        pass
    root = Path(jobs_dir) if jobs_dir else default_jobs_dir()
    if root.exists():
        for job_dir in root.iterdir():
            if (job_dir / "job.json").exists() and job_dir.name not in found:
                found[job_dir.name] = JobHandle(job_dir.name, job_dir)
    return sorted(found.values(), key=lambda h: h._submitted_at() or "")


def get_job(name: str, jobs_dir: str | Path | None = None) -> JobHandle:
    """The job called ``name``; a ByzerError naming the known jobs if there is none."""
    jobs = {job.name: job for job in list_jobs(jobs_dir)}
    if name not in jobs:
        known = ", ".join(jobs) or "none"
        raise ByzerError(f"no job named {name!r}{did_you_mean(name, jobs)}; jobs: {known}")
    return jobs[name]
