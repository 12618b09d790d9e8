"""Quiet cells: what Ray and DeepSpeed say about themselves in the kernel goes to Python logging (the
``byzer_magic.ray`` and ``byzer_magic.deepspeed`` loggers), not into the cell's output.
``%config ByzerMagic.verbose = True`` lets it through again. In the job itself, the driver's and the
workers' output is the job's log (``%byzerllm logs NAME``).

- Ray prints the errors and warnings its raylets push to every driver ("N PYTHON worker processes
  have been started ...") from a thread of ``ray.init`` that calls ``ray._private.worker.
  print_to_stdstream``; ``log_to_driver=False`` does not cover them. We replace that function.
- DeepSpeed logs through its ``DeepSpeed`` logger, which writes to stdout itself and does not
  propagate ("[WARNING] ... Setting accelerator to CPU" on import). A filter on that logger (set
  before DeepSpeed is imported, so ``%load_ext`` imports neither torch nor DeepSpeed) passes on its
  records below ERROR to ``byzer_magic.deepspeed`` instead.
"""
from __future__ import annotations

import logging

RAY_LOG = logging.getLogger("byzer_magic.ray")
DEEPSPEED_LOG = logging.getLogger("byzer_magic.deepspeed")
_state = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = bool(verbose)


class _DeepSpeedToLogging(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _state["verbose"] or record.levelno >= logging.ERROR:
            return True
        DEEPSPEED_LOG.handle(record)
        return False


def quiet_deepspeed() -> None:
    """Route the ``DeepSpeed`` logger's records below ERROR to ``byzer_magic.deepspeed`` (idempotent)."""
    # A library's records must reach a handler of ours, or logging's last resort prints them to stderr.
    package = logging.getLogger("byzer_magic")
    if not any(isinstance(h, logging.NullHandler) for h in package.handlers):
        package.addHandler(logging.NullHandler())
    deepspeed = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DeepSpeedToLogging) for f in deepspeed.filters):
        deepspeed.addFilter(_DeepSpeedToLogging())


def quiet_ray() -> None:
    """Route what Ray's raylets push to this driver into ``byzer_magic.ray`` (idempotent; imports ray).
    Only the error listener calls the function by this name: the log printer (``log_to_driver``) holds
    its own reference, and we leave that off anyway."""
    import ray._private.worker as ray_worker  # noqa: PLC0415

    current = ray_worker.print_to_stdstream
    if getattr(current, "byzer_quiet", False):
        return

    def print_to_stdstream(data, ignore_prefix: bool):
        if _state["verbose"]:
            return current(data, ignore_prefix)
        for line in data.get("lines", ()):
            RAY_LOG.warning("(%s) %s", data.get("pid", "ray"), line)
        return None

    print_to_stdstream.byzer_quiet = True
    ray_worker.print_to_stdstream = print_to_stdstream
