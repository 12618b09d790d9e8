"""Where byzer-magic keeps its own state on this machine (Ray head info, TensorBoard servers)."""
from __future__ import annotations

import os
from pathlib import Path

from byzer_magic.errors import ByzerError


def private_dir(path: str | os.PathLike) -> Path:
    """``path`` created 0700 if missing; an existing one must be the user's own (else a ByzerError: a
    folder another user made could hold a planted token or head record) and is tightened to 0700."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise ByzerError(f"the byzer-magic state folder {path} belongs to another user (uid {st.st_uid}, you are "
                         f"{os.getuid()}): set BYZER_MAGIC_HOME to a folder of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def state_dir() -> Path:
    """``$BYZER_MAGIC_HOME`` or ``~/.byzer_magic``; private to the user (0700, owned by them)."""
    return private_dir(os.environ.get("BYZER_MAGIC_HOME") or Path.home() / ".byzer_magic")


def default_jobs_dir() -> Path:
    """Default ``localPathPrefix``: ``$BYZER_MAGIC_JOBS`` or ``~/byzer_magic/jobs``."""
    return Path(os.environ.get("BYZER_MAGIC_JOBS") or Path.home() / "byzer_magic" / "jobs")
