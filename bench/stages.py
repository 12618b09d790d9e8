"""Where a tiny job's start-up goes: the seconds after ``submit()`` returns at which each stage's file
appears in the job folder (token store, plan.json, the workers' records, the first metrics line, the
last checkpoint, the exported model, result.json). 2 gloo workers, 3 standard-library files, 10 steps.

    .venv/bin/python bench/stages.py

Uses its own byzer-magic home under /tmp (its own embedded head, stopped at the end). Prints one line
per stage; docs/BENCHMARKS.md shows the figures.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bm-stages-", dir="/tmp"))
    os.environ["BYZER_MAGIC_HOME"] = str(work / "home")
    os.environ["BYZER_MAGIC_JOBS"] = str(work / "home" / "jobs")
    from byzer_magic import DeepSpeedTrain, ParallelConfig, TrainArgs
    from byzer_magic.runtime import cluster
    from tests.support.tiny import make_tiny_llama_dir, stdlib_text_files, train_sentencepiece

    model = make_tiny_llama_dir(work / "llama", train_sentencepiece(work / "tok"))
    data = work / "data"
    data.mkdir()
    for path in stdlib_text_files(3):
        (data / path.name).write_text(path.read_text())
    started = time.time()
    cluster.connect()
    print(f"head {time.time() - started:.1f} s", flush=True)
    try:
        t0 = time.time()
        handle = DeepSpeedTrain(ParallelConfig(
            num_workers=2, name="stages", local_path_prefix=str(work / "jobs"),
            train_args=TrainArgs(model_path=str(model), data_dir=str(data), steps_per_epoch=10, max_length=64,
                                 checkpoint_every=10))).submit()
        print(f"submit returned {time.time() - t0:.1f} s", flush=True)
        job = handle.job_dir
        marks = {"token store": job / "tokens" / "meta.json", "plan.json": job / "plan.json",
                 "workers": job / "workers" / "rank-1.json", "first metrics": job / "metrics.jsonl",
                 "checkpoint": job / "checkpoints" / "latest", "model": job / "model" / "config.json",
                 "result.json": job / "result.json"}
        seen: set[str] = set()
        while "result.json" not in seen and time.time() < t0 + 900:
            for stage, path in marks.items():
                if stage not in seen and path.exists():
                    seen.add(stage)
                    print(f"{stage} {time.time() - t0:.1f} s", flush=True)
            time.sleep(0.1)
        print("status", handle.wait(timeout=60))
    finally:
        cluster.stop_local_head()


if __name__ == "__main__":
    main()
