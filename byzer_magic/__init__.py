"""byzer-magic: Byzer's pretraining statements in Jupyter (``%load_ext byzer_magic``), on Ray + DeepSpeed.

Importing this package is cheap: IPython, Ray, DuckDB and torch load only when they are used.
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """``%load_ext byzer_magic``: register ``%%byzerllm`` / ``%byzerllm`` and ``%config ByzerMagic``."""
    from byzer_magic.magics.magic import ByzerMagic  # noqa: PLC0415

    magic = ByzerMagic(shell=ipython)
    ipython.register_magics(magic)
    if magic not in ipython.configurables:  # %config ByzerMagic.<x> = ... reaches configurables
        ipython.configurables.append(magic)  # (IPython 9 adds registered magics itself, 8 does not)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext byzer_magic``: remove the magics and their settings (Ray keeps running)."""
    from byzer_magic.magics.magic import ByzerMagic  # noqa: PLC0415

    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, ByzerMagic)]
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("byzerllm", None)
    ipython.magics_manager.registry.pop("ByzerMagic", None)


# ---- Public Python API (loaded on first use, so that `%load_ext byzer_magic` does not import torch) ---
_API = {
    "DeepSpeedTrain": "byzer_magic.runtime.kernel.submit", "TrainResult": "byzer_magic.runtime.kernel.submit",
    "ParallelConfig": "byzer_magic.runtime.config", "TrainArgs": "byzer_magic.runtime.config",
    "DEFAULT_CONFIG": "byzer_magic.runtime.config",
    "BaiChuanConfig": "byzer_magic.runtime.models", "BaiChuanForCausalLM": "byzer_magic.runtime.models",
    "build_model": "byzer_magic.runtime.models", "load_model": "byzer_magic.runtime.models",
    "list_jobs": "byzer_magic.runtime.kernel.jobs", "get_job": "byzer_magic.runtime.kernel.jobs",
    "JobHandle": "byzer_magic.runtime.kernel.jobs", "resume": "byzer_magic.runtime.kernel.resume",
    "ByzerError": "byzer_magic.errors",
}
__all__ = ["load_ipython_extension", "unload_ipython_extension", *_API, "DEFUALT_CONFIG"]


_ALIASES = {"DEFUALT_CONFIG": "DEFAULT_CONFIG"}  # the user document's spelling


def __getattr__(name: str):
    name = _ALIASES.get(name, name)
    if name in _API:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'byzer_magic' has no attribute {name!r}")
