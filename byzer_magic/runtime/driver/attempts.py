"""Run the worker group, restart it only when a restart can help, and record what was trained.

Ray Train runs each attempt with no retries of its own; this module decides: a worker or node that
was lost (its process killed, its node gone) is restarted from the last checkpoint, up to
``max_failures`` times. An error the training code raised (out of memory, a config error, a full
disk, a loss that is not finite) would fail the same way again: the job fails at once with its reason.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.spec import JobLayout, JobSpec
from byzer_magic.runtime.worker.health import recorded_failure


@dataclass
class Result:
    """``result.json``: the run's outcome and what it trained (the outputTable row reads it)."""
    name: str
    submission_id: str
    model_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    status: str = "FAILED"
    steps: int = 0
    total_steps: int | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    tokens_trained: int = 0
    corpus_tokens: int | None = None       # all documents (training and held-out)
    train_tokens: int | None = None        # the training split, per epoch
    epochs: int | None = None
    trained_share: float | None = None     # tokens trained / (training split x epochs)
    attempts: int = 0
    error: str | None = None
    seconds: float | None = None

    def planned(self, layout: JobLayout, epochs: int) -> None:
        self.total_steps, self.epochs = layout.total_steps, epochs
        self.corpus_tokens, self.train_tokens = layout.corpus.tokens, layout.corpus.train_tokens

    def finished(self, files: JobFiles, layout: JobLayout, epochs: int) -> None:
        """The record of a run that ended: rank 0's metrics are the truth for what was trained."""
        from byzer_magic.runtime.worker.metrics import read_metrics  # noqa: PLC0415

        logged = read_metrics(files.root)
        trained = logged[logged["loss"].notna()] if "loss" in logged else logged.iloc[0:0]
        if len(trained):
            last = trained.iloc[-1]
            self.steps = int(last["step"])
            self.final_loss = None if math.isnan(last["loss"]) else float(last["loss"])
        if "eval_loss" in logged and logged["eval_loss"].notna().any():
            self.eval_loss = float(logged["eval_loss"].dropna().iloc[-1])
            self.eval_perplexity = math.exp(min(self.eval_loss, 700.0))
        self.tokens_trained = self.steps * layout.tokens_per_step
        planned = (self.train_tokens or 0) * epochs
        self.trained_share = round(self.tokens_trained / planned, 6) if planned else None
        self.status = "SUCCEEDED" if self.steps == layout.total_steps else "FAILED"
        if self.status == "FAILED":
            self.error = f"trained {self.steps} of the {layout.total_steps} planned steps"

    def failed(self, error: str, *, lost: bool = False) -> None:
        self.status, self.error = ("LOST" if lost else "FAILED"), error

    def to_json(self) -> dict:
        return asdict(self)


def run_with_restarts(spec: JobSpec, layout: JobLayout, files: JobFiles) -> None:
    """Train to the end, restarting the worker group after a lost worker (``max_failures`` times)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    from byzer_magic.runtime.worker.loop import train_loop  # noqa: PLC0415

    name, limit = spec.job.name, spec.training.max_failures
    for attempt in range(limit + 1):
        trainer = TorchTrainer(
            train_loop, train_loop_config={"job_dir": str(files.root)},
            scaling_config=ScalingConfig(num_workers=spec.parallel.num_workers, use_gpu=layout.use_gpu,
                                         resources_per_worker={"CPU": spec.parallel.cpus_per_worker}),
            run_config=RunConfig(name=f"{spec.job.submission_id}-a{attempt}", storage_path=str(files.ray_train_dir),
                                 failure_config=FailureConfig(max_failures=0)))
        try:
            trainer.fit()
            return
        except Exception as err:  # noqa: BLE001 - sorted below: restart, or fail with the reason
            recorded = recorded_failure(files.root, spec.job.submission_id)  # a worker said why (health.py)
            reason = str(recorded) if recorded else deterministic_reason(err)
            if reason is not None:
                raise ByzerError(reason) from None
            if attempt == limit:
                raise ByzerError(f"a worker was lost {limit + 1} time(s) (max_failures={limit}): {_brief(err)}") from None
            print(f"[{name}] a worker was lost ({_brief(err)}); restarting from the last checkpoint "
                  f"({attempt + 1} of {limit})", flush=True)
            time.sleep(1)


def deterministic_reason(err: BaseException) -> str | None:
    """The one-line reason when the training code itself raised (a restart would fail the same way);
    None when a worker process or node was lost (then the survivors' errors, such as a closed
    connection in a collective, are consequences, not causes)."""
    failures = list(getattr(err, "worker_failures", {}).values()) or [err]
    raised = [_raised_by_training(f) for f in failures]
    if any(r is None for r in raised):
        return None
    first = raised[0]
    if isinstance(first, ByzerError):
        return str(first)
    if type(first).__name__ == "OutOfMemoryError" or "out of memory" in str(first).lower():
        return f"out of memory: {_brief(first)} (see what fits: %byzerllm plan, or dryRun=\"true\")"
    return f"{type(first).__name__}: {_brief(first)}"


def _raised_by_training(failure: BaseException) -> BaseException | None:
    """The exception the training function raised, or None for a lost worker (Ray Train reports what the
    function raised as ``UserExceptionWithTraceback``, the original in ``_base_exc``; a killed worker as a
    failed health check)."""
    import ray.exceptions  # noqa: PLC0415

    base = getattr(failure, "_base_exc", None)
    if base is not None or type(failure).__name__ == "UserExceptionWithTraceback":
        return base if base is not None else failure
    if isinstance(failure, ray.exceptions.RayTaskError) and not isinstance(failure, ray.exceptions.RayActorError):
        return failure.cause or failure
    return None


def _brief(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(err).__name__


def head_gone() -> bool:
    """True when the head this driver is connected to no longer accepts connections on its GCS port."""
    import socket  # noqa: PLC0415

    import ray  # noqa: PLC0415

    if not ray.is_initialized():
        return False
    try:
        host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=3).close()
        return False
    except (OSError, ValueError):
        return True
