"""The job API that the magics, the widgets and users share (Ray's job SDK is the model: narrow verbs).

A job is a Ray Job (``submission_id`` = the job's name, resumes add ``-r<k>``) plus its folder. The folder
is the truth for what a job produced (metrics, checkpoints, model, result); Ray is the truth for whether
it is still running. States are a typed ``JobStatus`` (a ``str``, so ``status == "RUNNING"`` still holds).

Honest states: a Jobs API call that fails for a transient reason (connection refused or reset, a timeout,
a 5xx answer) is retried with backoff (``RETRIES``, ``BACKOFF_S``); if it keeps failing, ``JobsApiError``
says so: it is never read as "the job is gone". ``LOST`` means that the head answers and does not know
this submission (it was replaced), the job's folder has no result for it, and no driver holds the folder's
lease (runtime/ownership.py): a driver that still heartbeats there is ``RUNNING``, on a head this kernel
no longer reaches.
"""
from __future__ import annotations

import enum
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime.home import default_jobs_dir
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.kernel import job_watchers
from byzer_magic.runtime.spec import JobLayout, JobSpec
from byzer_magic.runtime.worker.metrics import read_metrics


class JobStatus(str, enum.Enum):
    """A job's state, as Ray's job SDK names them, plus LOST (its head is gone and nothing holds it)."""
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    LOST = "LOST"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__  # f"{status}" is its value on every Python version

    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.LOST})
TERMINAL = tuple(s.value for s in JobStatus if s in _TERMINAL)
METADATA_KEY = "byzer_magic"
RETRIES = 4          # tries of a Jobs API call that fails transiently
BACKOFF_S = 0.5      # first pause between tries; doubled each time (0.5 + 1 + 2 s)


class JobsApiError(ByzerError):
    """The Ray Jobs API kept failing, or failed in a way that is not "no such job"."""


class _NotKnown(Exception):
    """The head answered: it has no job with this submission id."""


def _dashboard_url() -> str:
    from byzer_magic.runtime import cluster  # noqa: PLC0415

    return cluster.connect().dashboard_url


def _client():
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    return JobSubmissionClient(_dashboard_url())


def _kind(err: BaseException) -> str:
    """"missing" (the head does not know the job), "transient" (worth another try) or "fatal"."""
    import requests  # noqa: PLC0415

    text = str(err)
    if isinstance(err, RuntimeError) and ("does not exist" in text or "status code 404" in text):
        return "missing"
    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                        TimeoutError)):
        return "transient"
    if isinstance(err, RuntimeError) and any(f"status code {c}" in text for c in (500, 502, 503, 504)):
        return "transient"
    return "fatal"


def _call(what: str, fn: Callable[[Any], Any]) -> Any:
    """``fn(client)``, retried with backoff on transient errors; ``_NotKnown`` when the head does not
    know the job; ``JobsApiError`` for anything else, or when the tries run out."""
    delay, started = BACKOFF_S, time.time()
    for attempt in range(1, RETRIES + 1):
        try:
            return fn(_client())
        except ByzerError:  # cluster.connect's own message (a head that does not answer, ...)
            raise
        except Exception as err:  # classified below: nothing is swallowed
            kind = _kind(err)
            if kind == "missing":
                raise _NotKnown(str(err)) from None
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
            if kind == "fatal":
                raise JobsApiError(f"the Ray Jobs API failed to {what}: {reason}") from err
            if attempt == RETRIES:
                raise JobsApiError(f"the Ray Jobs API did not answer ({what}) after {RETRIES} tries over "
                                   f"{time.time() - started:.0f} s: {reason}") from err
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class JobHandle:
    """One training job. Cheap to create; every method reads the current state."""

    def __init__(self, name: str, job_dir: str | Path, submission_id: str | None = None):
        self.name = name
        self.files = JobFiles(job_dir)
        spec = self.spec
        self.submission_id = submission_id or (spec.job.submission_id if spec else name)

    def __repr__(self) -> str:
        try:
            status = self.status().value
        except ByzerError as err:  # a repr must not raise: show why the state is unknown
            status = f"unknown: {err.message}"
        return f"JobHandle({self.name!r}, status={status!r}, job_dir='{self.files.root}')"

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
        """Ray's id of the running attempt's driver (what its actors are filed under); None when the head
        does not know the submission. ``JobsApiError`` when the Jobs API keeps failing."""
        try:
            return _call(f"look up job {self.submission_id}", lambda c: c.get_job_info(self.submission_id).job_id)
        except _NotKnown:
            return None

    def _ray_status(self) -> JobStatus | None:
        """What Ray says; None when the head does not know the submission."""
        try:
            value = _call(f"read the status of job {self.submission_id}",
                          lambda c: c.get_job_status(self.submission_id))
        except _NotKnown:
            return None
        return JobStatus(str(getattr(value, "value", value)))

    def _result_json(self) -> dict:
        """result.json when this submission wrote it (a resume's driver rewrites it), else {}."""
        result = self.files.read_json("result.json") or {}
        return result if result.get("submission_id", self.submission_id) == self.submission_id else {}

    def status(self) -> JobStatus:
        """PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, or LOST (see the module's docstring)."""
        from byzer_magic.runtime.ownership import active_owner, read_owner  # noqa: PLC0415

        ray_status = self._ray_status()
        if ray_status in (JobStatus.PENDING, JobStatus.RUNNING):
            return ray_status
        result = self._result_json()
        if result.get("status"):
            if ray_status == JobStatus.STOPPED:
                return JobStatus.STOPPED
            try:
                return JobStatus(result["status"])
            except ValueError:
                raise ByzerError(f"{self.files.root / 'result.json'} has an unknown status "
                                 f"{result['status']!r}") from None
        if ray_status is not None:  # ended without a result (its driver was killed)
            return ray_status
        if active_owner(self.job_dir) == self.submission_id:  # Ray here does not know it; its driver lives
            record = read_owner(self.job_dir) or {}
            return JobStatus.PENDING if record.get("state") == "submitted" else JobStatus.RUNNING
        return JobStatus.LOST

    def wait(self, timeout: float | None = None, *, poll: float = 1.0,
             progress: Callable[["JobHandle"], None] | None = None) -> JobStatus:
        """Block until the job ends (or ``timeout`` seconds); returns its status then."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            status = self.status()
            if progress:
                progress(self)
            if status in TERMINAL:
                job_watchers.ended(self.job_dir, status)  # its monitors show the end before the cell goes on
                return status
            if deadline and time.time() > deadline:
                return status
            time.sleep(poll)

    def metrics(self):
        """Logged steps so far: a DataFrame with step, loss, lr, grad_norm, tokens_per_s, ..."""
        return read_metrics(self.files.root)

    def logs(self, tail: int | None = None) -> str:
        """The job's log (driver and workers); the last ``tail`` lines when given. "" when the head does
        not know the submission (its log went with a replaced head); ``JobsApiError`` when the API fails."""
        try:
            text = _call(f"read the log of job {self.submission_id}",
                         lambda c: c.get_job_logs(self.submission_id))
        except _NotKnown:
            text = ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    def stop(self, timeout: float = 60) -> JobStatus:
        """Stop the job and its workers; checkpoints stay. Returns the status once it has ended and Ray has
        freed its actors and placement groups. A stop that fails raises a ``ByzerError`` with the reason:
        the Jobs API refused or kept failing, the job runs on a head this kernel cannot reach, or it had
        not ended after ``timeout`` seconds."""
        from byzer_magic.runtime.kernel import cleanup  # noqa: PLC0415
        from byzer_magic.runtime.ownership import read_owner  # noqa: PLC0415

        deadline = time.time() + timeout
        ray_job_id = self.ray_job_id()
        try:
            _call(f"stop job {self.submission_id}", lambda c: c.stop_job(self.submission_id))
        except _NotKnown:
            status = self.status()
            if status in TERMINAL:
                return status  # nothing left to stop
            record = read_owner(self.job_dir) or {}
            raise ByzerError(f"cannot stop job {self.name}: it is {status} on a Ray head this kernel does "
                             f"not reach (driver pid {record.get('pid')} on {record.get('host')}); stop it from "
                             f"a kernel on that head, or end that process") from None
        except JobsApiError as err:
            raise JobsApiError(f"could not stop job {self.name}: {err.message}") from None
        status = self.wait(timeout=timeout, poll=0.5)
        if status not in TERMINAL:
            raise ByzerError(f"job {self.name} was asked to stop but is still {status} after {timeout:g} s; "
                             f"see %byzerllm logs {self.name}")
        if ray_job_id:
            try:
                cleanup.wait_released(ray_job_id, timeout=max(5.0, deadline - time.time()))
            except Exception as err:  # the state API is a check, never a reason for stop to fail: say so
                warnings.warn(f"job {self.name} stopped; Ray's state API could not confirm that its workers "
                              f"were released: {type(err).__name__}: {err}", stacklevel=2)
        return status

    def result(self) -> dict:
        """The run's row (outputTable): every key of the job's result.json (tokens_trained, eval_loss, error,
        ...), with name, status, model_dir, checkpoint_dir, tensorboard_dir, steps and final_loss always
        there (from the metrics while the job runs)."""
        result = self._result_json()
        metrics = self.metrics()
        last = metrics.iloc[-1] if len(metrics) else None
        return {**result, "name": self.name, "status": self.status(), "model_dir": str(self.model_dir),
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
    """Jobs the cluster knows (with their folders), and job folders under ``jobs_dir`` it does not.
    ``JobsApiError`` when the Jobs API keeps failing (the list would be incomplete)."""
    found: dict[str, JobHandle] = {}
    for info in _call("list jobs", lambda c: c.list_jobs()):
        meta = info.metadata or {}
        if meta.get(METADATA_KEY) and meta.get("job_dir"):
            found[meta["name"]] = JobHandle(meta["name"], meta["job_dir"])
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
