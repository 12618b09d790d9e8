"""A job folder as the runtime writes it (``job.json``: a ``JobSpec``; ``plan.json``: a ``JobLayout``),
for tests of what reads job folders (the monitor, the commands, export) without training."""
from __future__ import annotations

import time
from pathlib import Path

from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.spec import CorpusStats, JobLayout, JobSection, JobSpec


def write_job_folder(job_dir: str | Path, name: str, *, total_steps: int | None = None,
                     submitted_at: float | None = None, submission_id: str | None = None) -> Path:
    """``job_dir`` with the job's spec (and, given ``total_steps``, its layout); returns ``job_dir``."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    files = JobFiles(job_dir)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(submitted_at or time.time()))
    spec = JobSpec(job=JobSection(name=name, job_dir=str(job_dir), submission_id=submission_id or name,
                                  submitted_at=started))
    files.write_json("job.json", spec.to_json())
    if total_steps is not None:
        layout = JobLayout(use_gpu=False, micro_batch=1, grad_accum=1, ds_config={}, corpus=CorpusStats(),
                           sequences_per_epoch=total_steps, steps_per_epoch=total_steps, total_steps=total_steps,
                           tokens_per_step=0, eval_every=total_steps, eval_sequences=0, store_dir="",
                           model_dir=str(files.model_dir))
        files.write_json("plan.json", layout.to_json())
    return job_dir
