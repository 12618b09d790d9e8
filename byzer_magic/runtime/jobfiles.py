"""The layout of a job's folder (see docs/ARCHITECTURE.md) and its small JSON files."""
from __future__ import annotations

import json
import os
from pathlib import Path


class JobFiles:
    """Paths inside ``<localPathPrefix>/<name>/``; JSON files are replaced atomically."""

    def __init__(self, job_dir: str | os.PathLike):
        self.root = Path(job_dir)

    input_dir = property(lambda self: self.root / "input")
    tokens_dir = property(lambda self: self.root / "tokens")
    checkpoint_dir = property(lambda self: self.root / "checkpoints")
    model_dir = property(lambda self: self.root / "model")
    tensorboard_dir = property(lambda self: self.root / "tensorboard")
    ray_train_dir = property(lambda self: self.root / "ray_train")
    metrics_file = property(lambda self: self.root / "metrics.jsonl")
    workers_dir = property(lambda self: self.root / "workers")

    def read_json(self, name: str) -> dict | None:
        path = self.root / name
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_json(self, name: str, value: dict) -> None:
        path = self.root / name
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(value, indent=2, default=str))
        os.replace(tmp, path)
