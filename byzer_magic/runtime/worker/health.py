"""Is the run still training? A loss that is not finite, or DeepSpeed skipping too many optimizer
steps, ends the job ``FAILED`` at once, with the step, instead of a run that "succeeds" on NaN weights.

``LossGuard.check`` runs on every logged step (worker/loop.py), on every rank with the same all-reduced
loss, so that all ranks stop together. Such a failure is deterministic: a restart from the last
checkpoint would meet the same data and the same weights. ``record_failure`` writes it to the job folder
(``failure.json``) for the driver, which fails the job without a restart (``recorded_failure``).

``max_skipped_steps`` (``TrainingSection``, runtime/spec.py): with fp16, DeepSpeed skips a step whose
gradients overflowed and halves its loss scale; the first steps of a run are skipped while the scale
settles. Skipped steps are not trained: more than the limit over the run (``engine.skipped_steps``,
restored with each checkpoint) fails the job. bf16 and fp32 never skip.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from byzer_magic.errors import DeterministicFailure

FAILURE_FILE = "failure.json"


class NonFiniteLoss(DeterministicFailure):
    """The loss became NaN or infinite."""


class TooManySkippedSteps(DeterministicFailure):
    """DeepSpeed skipped more optimizer steps than ``max_skipped_steps`` allows."""


class LossGuard:
    """Checks each logged loss and DeepSpeed's skipped-step count; remembers the last healthy step."""

    def __init__(self, max_skipped_steps: int = 50):
        if isinstance(max_skipped_steps, bool) or not isinstance(max_skipped_steps, int) or max_skipped_steps < 0:
            raise ValueError(f"max_skipped_steps must be a whole number >= 0, got {max_skipped_steps!r}")
        self.max_skipped_steps = max_skipped_steps
        self.last_good_step: int | None = None  # the last step whose logged loss was finite
        self.skipped_steps = 0

    def check(self, step: int, loss: float | None, skipped_steps: int = 0) -> None:
        """Raise ``NonFiniteLoss`` ("loss is not finite at step N") or ``TooManySkippedSteps``; else
        record ``step`` as healthy. ``skipped_steps`` is ``engine.skipped_steps`` (a running total)."""
        value = float("nan") if loss is None else float(loss)
        self.skipped_steps = int(skipped_steps or 0)
        if not math.isfinite(value):
            since = f" (last finite at step {self.last_good_step})" if self.last_good_step is not None else ""
            raise NonFiniteLoss(f"loss is not finite at step {step}: {value}{since}; the job stops instead of "
                                f"training on broken weights. Lower the learning rate or use bf16, then resume "
                                f"from the last good checkpoint")
        if self.skipped_steps > self.max_skipped_steps:
            raise TooManySkippedSteps(
                f"DeepSpeed skipped {self.skipped_steps} optimizer steps by step {step} (gradient overflow), more "
                f"than max_skipped_steps={self.max_skipped_steps}: those steps trained nothing. Use bf16 or a "
                f"lower learning rate, or raise sfft.int.max_skipped_steps")
        self.last_good_step = step

    def healthy_at(self, step: int) -> bool:
        """True when the loss logged at ``step`` was checked and finite (``checkpoint.save(..., good=)``)."""
        return self.last_good_step == step


def skipped_steps_of(engine) -> int:
    """DeepSpeed's count of skipped optimizer steps (0 for an engine without one)."""
    return int(getattr(engine, "skipped_steps", 0) or 0)


def record_failure(job_dir: str | Path, submission_id: str, error: DeterministicFailure, *, rank: int = 0) -> None:
    """Write ``failure.json`` (rank 0 only): the driver reads it and fails the job without a restart."""
    if rank != 0:
        return
    from byzer_magic.runtime.jobfiles import JobFiles  # noqa: PLC0415

    JobFiles(job_dir).write_json(FAILURE_FILE, {"submission_id": submission_id, "kind": type(error).__name__,
                                                "error": error.message, "time": time.time()})


def recorded_failure(job_dir: str | Path, submission_id: str) -> DeterministicFailure | None:
    """The deterministic failure this attempt recorded (``record_failure``), or None."""
    from byzer_magic.runtime.jobfiles import JobFiles  # noqa: PLC0415

    record = JobFiles(job_dir).read_json(FAILURE_FILE)
    if not record or record.get("submission_id") != submission_id:
        return None
    return DeterministicFailure(str(record.get("error", "the job failed")))
