"""DeepSpeed's import, without the ``import mlflow`` of its autotuner (which we never run).

``deepspeed/autotuning/autotuner.py`` tries ``import mlflow`` whenever DeepSpeed is imported; with the
``[mlflow]`` extra installed that costs ~4 s of CPU in every process that imports DeepSpeed (the kernel's
plan, the job's driver and each training worker), more than the rest of DeepSpeed's own import. Call
``import_deepspeed()`` before any ``from deepspeed... import``; MLflow itself stays importable after it
(runtime/worker/trackers.py imports it when a job reports to it).
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_deepspeed() -> ModuleType:
    """The ``deepspeed`` module, imported once per process with ``mlflow`` hidden from it."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # ``import mlflow`` raises ImportError: the autotuner notes it lacks it
    try:
        return importlib.import_module("deepspeed")
    finally:
        if hide:
            del sys.modules["mlflow"]
