"""CPU benchmark on the embedded default (this machine's CPUs, gloo): how long a blocking run takes to
reach its first training step, where that time goes, and steps/s for a tiny Llama.

    .venv/bin/python bench/cpu.py [--workers 2] [--steps 30]

Writes bench/results/cpu.json; docs/BENCHMARKS.md shows the figures. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bm-bench-", dir="/tmp"))
    os.environ["BYZER_MAGIC_HOME"] = str(work / "home")

    from tests.support.tiny import make_tiny_llama_dir, stdlib_text_files, train_sentencepiece

    data = work / "data"
    data.mkdir()
    for path in stdlib_text_files(40):
        (data / path.name).write_text(path.read_text())
    tokenizer = train_sentencepiece(work / "tok")
    model_dir = make_tiny_llama_dir(work / "llama", tokenizer)

    from byzer_magic import DeepSpeedTrain, ParallelConfig, TrainArgs
    from byzer_magic.runtime import cluster

    t0 = time.time()
    cluster.connect()
    head_s = time.time() - t0
    name = f"bench-{int(time.time())}"
    t1 = time.time()
    result = DeepSpeedTrain(ParallelConfig(
        num_workers=args.workers, name=name, local_path_prefix=str(work / "jobs"),
        ds_config={"train_micro_batch_size_per_gpu": 4},
        train_args=TrainArgs(model_path=str(model_dir), data_dir=str(data), steps_per_epoch=args.steps,
                             max_length=args.max_length, checkpoint_every=10_000))).train()
    total_s = time.time() - t1
    job = Path(result.model_dir).parent
    metrics = result.metrics
    times = metrics["time"].tolist()
    steady = [b - a for a, b in zip(times[3:], times[4:])]
    phases = {
        "submit_s": (job / "job.json").stat().st_mtime - t1,
        "tokenize_and_plan_s": (job / "plan.json").stat().st_mtime - (job / "job.json").stat().st_mtime,
        "plan_to_first_step_s": times[0] - (job / "plan.json").stat().st_mtime,
    }
    out = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, load average {os.getloadavg()[0]:.1f}",
        "model": "tiny Llama (hidden 64, 2 layers, vocab 512)",
        "workers": args.workers, "micro_batch": 4, "max_length": args.max_length, "steps": len(metrics),
        "head_start_s": round(head_s, 1),
        "start_to_first_step_s": round(times[0] - t1, 1),
        **{k: round(v, 1) for k, v in phases.items()},
        "steps_per_s": round(1 / statistics.median(steady), 2) if steady else None,
        "tokens_per_s": round(float(metrics["tokens_per_s"].iloc[4:].median()), 1),
        "total_s": round(total_s, 1),
        "command": "python bench/cpu.py " + " ".join(sys.argv[1:]),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "cpu.json").write_text(json.dumps(out, indent=2) + "\n")
    for key, value in out.items():
        print(f"{key:>24}  {value}")
    cluster.stop_local_head()


if __name__ == "__main__":
    main()
