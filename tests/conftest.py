"""Shared fixtures: a private byzer-magic home per test session (so parallel runs never share a Ray
head), the real embedded Ray head, and a real IPython shell with the extension loaded."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports byzer_magic or ray: the home decides which Ray head we talk to.
# BYZER_MAGIC_TEST_HOME (opt-in, for quick local iterations): a fixed home whose Ray head is reused
# across test sessions and left running at the end.
_KEEP_HEAD = bool(os.environ.get("BYZER_MAGIC_TEST_HOME"))
_HOME = Path(os.environ.get("BYZER_MAGIC_TEST_HOME") or tempfile.mkdtemp(prefix="bm-", dir="/tmp"))
_HOME.mkdir(parents=True, exist_ok=True)
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
    if not _KEEP_HEAD:
        cluster.stop_local_head()


@pytest.fixture(scope="session")
def gloo_group(tmp_path_factory):
    """One single-process gloo group for every in-process DeepSpeed engine of the session, never
    destroyed: DeepSpeed caches the groups of the first process group it sees (a later engine on a
    new group fails with "Group ... is not registered")."""
    import deepspeed
    import torch.distributed as dist

    # As the workers do on the CPU: no JIT build of DeepSpeed's shared-memory all-reduce (about 60 s).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("gloo") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield


@pytest.fixture
def shell(ray_cluster):
    """A real IPython shell with byzer_magic loaded; each test gets a fresh Byzer session."""
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "byzer_magic")
    ip.run_line_magic("byzerllm", "reset")
    yield ip


@pytest.fixture(scope="session")
def text_files(tmp_path_factory) -> Path:
    """Real text to load: Python stdlib sources, ``email/*.py`` at the top (20 files) and ``json/*.py``
    one folder down (for ``**``), plus a hidden file that loading must skip."""
    import email
    import json
    import shutil

    root = tmp_path_factory.mktemp("text")
    for path in sorted(Path(email.__file__).parent.glob("*.py"))[:20]:
        shutil.copy(path, root / path.name)
    (root / "nested" / "json").mkdir(parents=True)
    for path in sorted(Path(json.__file__).parent.glob("*.py")):
        shutil.copy(path, root / "nested" / "json" / path.name)
    (root / ".hidden.py").write_text("never loaded\n")
    return root


@pytest.fixture
def byzer(shell):
    """Run a ``%%byzerllm`` cell as a user would; returns the cell's value, raises its UsageError."""
    def run(cell: str, line: str = ""):
        return shell.run_cell_magic("byzerllm", line, cell)
    return run
