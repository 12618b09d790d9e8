"""Where byzer-magic keeps its own state on this machine (Ray head info, TensorBoard servers)."""
from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """``$BYZER_MAGIC_HOME`` or ``~/.byzer_magic``; created private to the user (0700)."""
    path = Path(os.environ.get("BYZER_MAGIC_HOME") or Path.home() / ".byzer_magic")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def default_jobs_dir() -> Path:
    """Default ``localPathPrefix``: ``$BYZER_MAGIC_JOBS`` or ``~/byzer_magic/jobs``."""
    return Path(os.environ.get("BYZER_MAGIC_JOBS") or Path.home() / "byzer_magic" / "jobs")
