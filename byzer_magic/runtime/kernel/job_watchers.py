"""Who in this kernel wants to know that a job has ended: a monitor whose picture must show the end
before the notebook is saved (widgets/monitor.py). ``JobHandle.wait()`` (jobs.py) calls ``ended`` when
it sees a terminal status, through whichever handle of the job it was called on; a monitor's own
polling thread may see the end later. Listeners are held weakly: a closed or dropped monitor is not kept
alive by the jobs it watched.
"""
from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import Callable

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_LISTENERS: dict[str, list[weakref.WeakMethod]] = {}


def _key(job_dir: str | Path) -> str:
    return str(Path(job_dir).resolve())


def on_end(job_dir: str | Path, method: Callable[[str], None]) -> None:
    """Call the bound ``method(status)`` when a wait in this process sees the job in ``job_dir`` end."""
    with _LOCK:
        _LISTENERS.setdefault(_key(job_dir), []).append(weakref.WeakMethod(method))


def ended(job_dir: str | Path, status: str) -> None:
    """Tell the job's listeners that it ended with ``status``; a listener that fails is logged, not raised
    (the wait that saw the end still returns it)."""
    with _LOCK:
        refs = _LISTENERS.get(_key(job_dir), [])
        alive = [r for r in refs if r() is not None]
        if alive:
            _LISTENERS[_key(job_dir)] = alive
        else:
            _LISTENERS.pop(_key(job_dir), None)
    for ref in alive:
        method = ref()
        if method is None:
            continue
        try:
            method(status)
        except Exception:  # noqa: BLE001 - a monitor's refresh must not turn a finished wait into an error
            _log.warning("a listener of %s failed", job_dir, exc_info=True)
