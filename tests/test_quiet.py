"""Quiet cells (magics/quiet.py), in a real kernel on the test session's Ray head: DeepSpeed's notices
and what Ray's raylets push to the driver go to Python logging; `%config ByzerMagic.verbose = True`
shows them in the cell again."""
from __future__ import annotations

from tests.support.notebooks import running_kernel

RECORD = """import logging
seen = []
class Keep(logging.Handler):
    def emit(self, record):
        seen.append(f"{record.name}: {record.getMessage()}")
logging.getLogger("byzer_magic").addHandler(Keep())"""
# What Ray's error listener thread (ray._private.worker.listen_error_messages) does with a raylet's message.
RAYLET_SAYS = """import ray._private.worker as ray_worker
ray_worker.print_to_stdstream({"lines": ["WARNING: 4 PYTHON worker processes have been started on node x"],
                               "pid": "raylet", "is_err": False}, ignore_prefix=False)"""


def test_framework_warnings_go_to_logging_unless_verbose(ray_cluster, tmp_path):
    with running_kernel(cwd=tmp_path) as kernel:
        kernel.run("%load_ext byzer_magic")
        kernel.run(RECORD)
        said = kernel.run("import deepspeed\nfrom deepspeed.utils import logger\n"
                          "logger.warning('a DeepSpeed notice')")  # a CPU machine also gets "Setting accelerator to CPU"
        assert "[WARNING]" not in said and "DeepSpeed notice" not in said, said
        kernel.run("%byzerllm jobs")  # connects to Ray
        said = kernel.run(RAYLET_SAYS)
        assert "PYTHON worker processes" not in said, said
        logged = kernel.run("print('\\n'.join(seen))")
        assert "DeepSpeed: a DeepSpeed notice" in logged, logged  # DeepSpeed's own record, passed on
        assert "byzer_magic.ray: (raylet) WARNING: 4 PYTHON worker processes" in logged, logged

        kernel.run("%config ByzerMagic.verbose = True")
        assert "4 PYTHON worker processes have been started" in kernel.run(RAYLET_SAYS)
        assert "[WARNING]" in kernel.run("logger.warning('a DeepSpeed notice, shown')")
        kernel.run("%config ByzerMagic.verbose = False")
        assert "shown again" not in kernel.run("logger.warning('not shown again')")
