"""What the loop reports each step: the mean loss over the workers (read back from the device only on
logged steps, so a GPU step never waits for the host), lr, grad norm, throughput, tokens trained, and
the held-out loss when it was evaluated. Rank 0 writes them (``worker/metrics.py``) and prints a line.
A loss that is not finite, or too many steps DeepSpeed skipped, stops the job (``worker/health.py``)."""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from byzer_magic.errors import DeterministicFailure
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.spec import JobLayout, JobSpec
from byzer_magic.runtime.worker.health import LossGuard, record_failure, skipped_steps_of


class StepLog:
    def __init__(self, spec: JobSpec, layout: JobLayout, files: JobFiles, rank: int, engine, *, resume_step: int):
        self.spec, self.layout, self.engine = spec, layout, engine
        self.name, self.rank = spec.job.name, rank
        self.world = spec.parallel.num_workers
        self.loss_sum = torch.zeros((), device=engine.device)
        self.since, self.t0, self.last_loss = 0, time.time(), None
        self.guard = LossGuard(spec.training.max_skipped_steps)
        self.job_dir, self.submission_id = files.root, spec.job.submission_id
        self.writer = None
        if rank == 0:
            from byzer_magic.runtime.worker.metrics import MetricsWriter  # noqa: PLC0415

            self.writer = MetricsWriter(files.root, resume_step=resume_step, spec=spec)

    def add(self, micro_loss: torch.Tensor) -> None:
        """One micro-batch's loss (the step's loss is their mean)."""
        self.loss_sum += micro_loss.detach() / self.layout.grad_accum

    def eval_due(self, step: int) -> bool:
        return bool(self.layout.eval_sequences) and (step % self.layout.eval_every == 0 or
                                                     step == self.layout.total_steps)

    def step(self, step: int, held_out: tuple[float, float] | None) -> None:
        self.since += 1
        total = self.layout.total_steps
        if not (step % self.spec.training.log_every == 0 or step == total or held_out):
            return
        dist.all_reduce(self.loss_sum, op=dist.ReduceOp.SUM)
        self.last_loss = self.loss_sum.item() / (self.world * self.since)
        try:  # every rank sees the same all-reduced loss, so all stop together
            self.guard.check(step, self.last_loss, skipped_steps_of(self.engine))
        except DeterministicFailure as err:
            record_failure(self.job_dir, self.submission_id, err, rank=self.rank)
            raise
        elapsed, self.t0 = time.time() - self.t0, time.time()
        if self.writer:
            tokens = self.layout.tokens_per_step
            extra = {"eval_loss": held_out[0], "eval_perplexity": held_out[1]} if held_out else {}
            self.writer.log(step, epoch=(step - 1) // self.layout.steps_per_epoch, loss=self.last_loss,
                            lr=float(self.engine.get_lr()[0]), grad_norm=_float(self.engine.get_global_grad_norm()),
                            tokens_per_s=tokens * self.since / max(elapsed, 1e-9), tokens=step * tokens,
                            total_steps=total, **extra)
            held = f" eval_loss {held_out[0]:.4f}" if held_out else ""
            print(f"[W-0-{self.name}] step {step}/{total} epoch {(step - 1) // self.layout.steps_per_epoch} "
                  f"loss {self.last_loss:.4f}{held}", flush=True)
        self.loss_sum.zero_()
        self.since = 0

    def healthy_at(self, step: int) -> bool:
        """The loss logged at ``step`` was checked finite (such a checkpoint is kept out of the rotation)."""
        return self.guard.healthy_at(step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _float(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)
