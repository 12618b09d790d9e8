"""Experiment trackers besides TensorBoard (``report_to``): MLflow and Weights & Biases, on rank 0.

``worker/metrics.py``'s ``MetricsWriter`` hands each logged record to the trackers the job lists. Each
tracker talks to its service on a thread of its own, fed through a bounded queue, so a slow or
unreachable server never holds a training step. A tracker that fails (its package missing on this
node, the server down) says so once in the job's log and training goes on: ``metrics.jsonl`` stays
the record of every step.

A resumed job continues the same tracker run: its id is kept in the job folder (``mlflow_run_id``,
``wandb_run_id``), and the steps the run already has (logged by the attempt that was lost after its
last checkpoint) are not sent again. The run's parameters are the job's training arguments, logged
once; no secret is among them (``TrackingSection``: keys travel through the environment).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from pathlib import Path

from byzer_magic.runtime.spec import JobSpec, sfft_fields, trackers_of

MLFLOW_RUN_FILE = "mlflow_run_id"
WANDB_RUN_FILE = "wandb_run_id"
# metrics.jsonl keys sent to the trackers (worker/metrics.py's SCALARS, plus where the run stands)
METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "eval_loss", "eval_perplexity", "epoch", "tokens")
_QUEUE = 100_000
_CLOSE_TIMEOUT = 120.0  # W&B's finish on a loaded node can take a minute


def job_params(spec: JobSpec) -> dict:
    """The job's training arguments, flat (every ``sfft`` field of the spec), with its name, model type
    and worker count."""
    out = {name: getattr(getattr(spec, section), name) for name, (section, _) in sfft_fields().items()}
    out.update(job=spec.job.name, model_type=spec.model.model_type, num_workers=spec.parallel.num_workers)
    return out


def open_trackers(spec: JobSpec, job_dir: str | os.PathLike, *, resume_step: int = 0) -> list["Tracker"]:
    """The trackers ``spec.tracking.report_to`` lists besides TensorBoard, started."""
    kinds = {"mlflow": MlflowTracker, "wandb": WandbTracker}
    return [kinds[name](spec, job_dir, resume_step=resume_step)
            for name in trackers_of(spec.tracking.report_to) if name in kinds]


class Tracker:
    """One tracker's thread: ``_open`` (the run), ``_send`` per record, ``_finish`` at ``close``."""
    name = ""

    def __init__(self, spec: JobSpec, job_dir: str | os.PathLike, *, resume_step: int = 0):
        self.spec, self.job_dir, self.resume_step = spec, Path(job_dir), resume_step
        self.failed = False       # could not start: records are dropped
        self.warned = False
        self.sent_until = 0       # steps the run already has (a resume does not send them again)
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE)
        self._thread = threading.Thread(target=self._run, name=f"byzer-magic-{self.name}", daemon=True)
        self._thread.start()

    def log(self, step: int, values: dict) -> None:
        """Queue one record (never blocks, never raises)."""
        if self.failed:
            return
        try:
            self._queue.put_nowait((step, dict(values)))
        except queue.Full:
            self._warn(f"{self.name} is {_QUEUE:,} records behind; dropping records")

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Send what is queued and end the run, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._warn(f"{self.name} did not finish within {timeout:g} s; the records still queued are dropped")

    def _run(self) -> None:
        try:
            self._open()
        except Exception as err:  # noqa: BLE001: a tracker never stops training
            self.failed = True
            self._warn(f"{self.name} could not start ({_short(err)})")
            return
        while (item := self._queue.get()) is not None:
            step, values = item
            if step <= self.sent_until:
                continue
            try:
                self._send(step, values)
            except Exception as err:  # noqa: BLE001
                self._warn(f"{self.name} failed at step {step} ({_short(err)}); it is tried again at the next steps")
        try:
            self._finish()
        except Exception as err:  # noqa: BLE001
            self._warn(f"{self.name} could not end its run ({_short(err)})")

    def _warn(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            print(f"[W-0-{self.spec.job.name}] warning: {message}; training goes on, metrics.jsonl has every step",
                  flush=True)

    def _run_id(self, file_name: str, new) -> tuple[str, bool]:
        """The run id kept in the job folder, or ``new()`` (then kept); and whether it was kept before."""
        path = self.job_dir / file_name
        if path.exists() and path.read_text().strip():
            return path.read_text().strip(), True
        run_id = new()
        tmp = path.with_name(f".{file_name}.tmp-{os.getpid()}")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
        return run_id, False

    def _open(self) -> None:
        raise NotImplementedError

    def _send(self, step: int, values: dict) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class MlflowTracker(Tracker):
    """An MLflow run named after the job in ``mlflow_experiment`` on ``mlflow_tracking_uri``."""
    name = "mlflow"

    def _open(self) -> None:
        # MLflow retries a request 7 times with backoff by default (minutes when the server is down)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.entities import Param, RunStatus  # noqa: PLC0415
        from mlflow.tracking import MlflowClient  # noqa: PLC0415

        tracking = self.spec.tracking
        self.client = client = MlflowClient(tracking_uri=tracking.mlflow_tracking_uri)
        run_file = self.job_dir / MLFLOW_RUN_FILE
        kept = run_file.read_text().strip() if run_file.exists() else ""
        if kept and _mlflow_run_exists(client, kept):
            self.run_id = kept
            client.update_run(kept, status=RunStatus.to_string(RunStatus.RUNNING))
            self.sent_until = max((m.step for m in client.get_metric_history(kept, "loss")), default=0)
            return
        experiment = client.get_experiment_by_name(tracking.mlflow_experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(tracking.mlflow_experiment)
            except Exception:  # noqa: BLE001: another job created it meanwhile
                experiment_id = client.get_experiment_by_name(tracking.mlflow_experiment).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run = client.create_run(experiment_id, run_name=self.spec.job.name,
                                tags={"byzer_magic.job": self.spec.job.name, "byzer_magic.job_dir": str(self.job_dir)})
        self.run_id = run.info.run_id
        client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in job_params(self.spec).items()])
        tmp = run_file.with_name(f".{run_file.name}.tmp-{os.getpid()}")
        tmp.write_text(self.run_id + "\n")
        os.replace(tmp, run_file)

    def _send(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415

        stamp = int(values.get("time", time.time()) * 1000)
        metrics = [Metric(key, float(values[key]), stamp, step) for key in METRICS if values.get(key) is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def _finish(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")


class WandbTracker(Tracker):
    """A W&B run named after the job in ``wandb_project``; its files under the job folder's ``wandb/``
    (offline: ``wandb sync <job folder>/wandb/offline-run-*`` uploads them)."""
    name = "wandb"

    def _open(self) -> None:
        import wandb  # noqa: PLC0415

        tracking = self.spec.tracking
        run_id, resumed = self._run_id(WANDB_RUN_FILE, lambda: uuid.uuid4().hex[:16])
        params = job_params(self.spec)
        self.run = wandb.init(project=tracking.wandb_project, name=self.spec.job.name, id=run_id, resume="allow",
                              dir=str(self.job_dir), mode=tracking.wandb_mode, config=None if resumed else params,
                              settings=wandb.Settings(console="off"))  # the worker's output stays the job's log
        if resumed:  # a resume may change an argument (resume's overrides)
            self.run.config.update(params, allow_val_change=True)
            self.sent_until = max(0, int(getattr(self.run, "step", 0) or 0) - 1)

    def _send(self, step: int, values: dict) -> None:
        self.run.log({key: values[key] for key in METRICS if values.get(key) is not None}, step=step)

    def _finish(self) -> None:
        import wandb  # noqa: PLC0415

        self.run.finish()
        # finish() returns before W&B's service has written the run's last records; ending the service
        # waits for them (Ray may end this worker right after training)
        wandb.teardown()


def _mlflow_run_exists(client, run_id: str) -> bool:
    """The kept run is still on the server (a lost server raises: the tracker warns)."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _short(err: Exception) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
