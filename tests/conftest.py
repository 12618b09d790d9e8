"""Shared fixtures: a private byzer-magic home per test session (so parallel runs never share a Ray
head), the real embedded Ray head, and a real IPython shell with the extension loaded."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports byzer_magic or ray: the home decides which Ray head we talk to.
_HOME = Path(tempfile.mkdtemp(prefix="bm-", dir="/tmp"))
os.environ["BYZER_MAGIC_HOME"] = str(_HOME)
os.environ["BYZER_MAGIC_JOBS"] = str(_HOME / "jobs")
os.environ.pop("RAY_ADDRESS", None)
# Compiled DeepSpeed ops are expensive (~60-100 s each): share them across test sessions.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "byzer_magic" / "torch_extensions"))


@pytest.fixture(scope="session")
def byzer_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def ray_cluster(byzer_home):
    """The embedded Ray head, started once per test session and stopped at its end."""
    from byzer_magic.runtime import cluster

    info = cluster.connect()
    yield info
    cluster.stop_local_head()


@pytest.fixture
def shell(ray_cluster):
    """A real IPython shell with byzer_magic loaded; each test gets a fresh Byzer session."""
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "byzer_magic")
    ip.run_line_magic("byzerllm", "reset")
    yield ip
