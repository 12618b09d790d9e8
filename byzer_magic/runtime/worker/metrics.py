"""Training metrics: one JSON line per logged step (what the notebook reads while the job runs), always;
TensorBoard scalars (DeepSpeed 0.19's monitor writes the lr but not the loss, so we write both) and the
other trackers (``worker/trackers.py``: MLflow, W&B) when the job's ``report_to`` lists them."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byzer_magic.runtime.spec import JobSpec

METRICS_FILE = "metrics.jsonl"
# metrics.jsonl key -> TensorBoard tag
SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
           "tokens_per_s": "train/tokens_per_s", "eval_loss": "eval/loss", "eval_perplexity": "eval/perplexity"}


class MetricsWriter:
    """Rank 0's writer. Appends and flushes each record, so a reader never waits for a buffer and a
    resumed run continues the same file and the same TensorBoard run (``purge_step`` drops the
    steps after the checkpoint that a failed attempt had already logged, all of them when it restarts
    without a checkpoint). Without ``spec`` it writes
    metrics.jsonl and TensorBoard; with it, what ``spec.tracking.report_to`` lists."""

    def __init__(self, job_dir: str | os.PathLike, *, resume_step: int = 0, spec: "JobSpec | None" = None):
        from byzer_magic.runtime.spec import trackers_of  # noqa: PLC0415
        from byzer_magic.runtime.worker.trackers import open_trackers  # noqa: PLC0415

        self.path = Path(job_dir) / METRICS_FILE
        if self.path.exists():  # an earlier attempt's steps after the checkpoint (all of them without one)
            _truncate_after(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if spec is None or "tensorboard" in trackers_of(spec.tracking.report_to):
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

            self._tb = SummaryWriter(str(Path(job_dir) / "tensorboard"),
                                     purge_step=resume_step + 1)
        self.trackers = open_trackers(spec, job_dir, resume_step=resume_step) if spec is not None else []

    def log(self, step: int, **values: float) -> None:
        record = {"step": step, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, tag in SCALARS.items():
                if values.get(key) is not None:
                    self._tb.add_scalar(tag, values[key], step)
            self._tb.flush()
        for tracker in self.trackers:  # queued: a tracker never holds the step (worker/trackers.py)
            tracker.log(step, record)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        for tracker in self.trackers:
            tracker.close()


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line in path.read_text().splitlines() if line.strip() and _step(line) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError):
        return 1 << 62


def read_metrics(job_dir: str | os.PathLike):
    """The metrics logged so far as a pandas DataFrame (columns: step, loss, lr, ...); empty if none.
    A line being written while we read is skipped, not an error."""
    import pandas as pd  # noqa: PLC0415

    path = Path(job_dir) / METRICS_FILE
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    frame = pd.DataFrame(rows, columns=None if rows else ["step", "time", "loss", "lr", "grad_norm",
                                                          "tokens_per_s", "tokens", "epoch", "eval_loss",
                                                          "eval_perplexity"])
    return frame.drop_duplicates("step", keep="last").reset_index(drop=True) if rows else frame
