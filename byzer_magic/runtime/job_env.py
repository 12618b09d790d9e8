"""What a job's driver gets from the kernel's environment, and how secrets travel.

Plain variables (``TORCH_EXTENSIONS_DIR``, ``NCCL_*``, ``HF_HOME``, ...) go into the Ray Job's
``runtime_env.env_vars``. Secrets (``HF_TOKEN``, ``WANDB_API_KEY``, anything named like a token, key or
password) never do: the Jobs API shows a job's runtime_env and metadata to anyone who can reach the
dashboard. They go into ``<job_dir>/.secrets.json`` (0600, in the 0700 job folder) instead; the job's
entrypoint, ``python -m byzer_magic.runtime.job_env <job_dir>``, moves them into its own environment,
deletes the file, and then runs the driver (``runtime/driver/entry.py``).

The training workers need them too (a W&B key, an MLflow token, ``HF_TOKEN``), and on a remote cluster
their processes do not inherit the kernel's environment; Ray Train shows ``train_loop_config`` on the
dashboard, so they do not travel there either. While it trains, the driver keeps them in
``<job_dir>/.worker-secrets.json`` (0600; ``handed_to_workers``), which each worker reads when it starts
(``load_worker_secrets``, again after a restart) and the driver deletes when the training ends.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import runpy
import sys
from pathlib import Path

FORWARDED = ("TORCH_EXTENSIONS_DIR", "NCCL_", "HF_", "HUGGING_FACE_", "WANDB_", "MLFLOW_")
SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|AUTH", re.I)
SECRETS_FILE = ".secrets.json"
WORKER_SECRETS_FILE = ".worker-secrets.json"
_loaded: dict[str, str] = {}


def split_env(environ: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """The forwarded variables of ``environ`` (default ``os.environ``) as (plain, secret)."""
    environ = os.environ if environ is None else environ
    forwarded = {k: v for k, v in environ.items() if k.startswith(FORWARDED)}
    secret = {k: v for k, v in forwarded.items() if SECRET.search(k)}
    return {k: v for k, v in forwarded.items() if k not in secret}, secret


def write_secrets(job_dir: str | os.PathLike, secrets: dict[str, str], name: str = SECRETS_FILE) -> None:
    """Write ``secrets`` to the job's 0600 secrets file (replacing an earlier one); none: remove it."""
    path = Path(job_dir) / name
    path.unlink(missing_ok=True)
    if not secrets:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secrets, f)
        f.flush()
        os.fsync(f.fileno())


def load_secrets(job_dir: str | os.PathLike) -> dict[str, str]:
    """Move the job's secrets into this process's environment and delete their file (the driver calls
    this first). Returns them, and ``secrets()`` does later (for a driver that hands them on)."""
    path = Path(job_dir) / SECRETS_FILE
    values = _into_environ(path)
    if values is None:
        return {}
    path.unlink(missing_ok=True)
    _loaded.update(values)
    return values


def _into_environ(path: Path) -> dict[str, str] | None:
    """The secrets file at ``path`` put into this process's environment; None if it cannot be read."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    values = {str(k): str(v) for k, v in values.items()}
    os.environ.update(values)
    return values


def secrets() -> dict[str, str]:
    """The secrets ``load_secrets`` moved into this process."""
    return dict(_loaded)


@contextlib.contextmanager
def handed_to_workers(job_dir: str | os.PathLike):
    """The driver's secrets in the workers' 0600 file while the block (the training) runs."""
    write_secrets(job_dir, secrets(), WORKER_SECRETS_FILE)
    try:
        yield
    finally:
        (Path(job_dir) / WORKER_SECRETS_FILE).unlink(missing_ok=True)


def load_worker_secrets(job_dir: str | os.PathLike) -> list[str]:
    """Put the secrets the driver handed on into this worker's environment; their names."""
    return sorted(_into_environ(Path(job_dir) / WORKER_SECRETS_FILE) or ())


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m byzer_magic.runtime.job_env <job_dir>")
    # Run as ``-m``, this module is ``__main__``; the driver imports it by name, a second module object:
    # the secrets must be kept in that one, where ``handed_to_workers`` finds them.
    importlib.import_module("byzer_magic.runtime.job_env").load_secrets(argv[0])
    sys.argv = ["byzer_magic.runtime.driver.entry", argv[0]]
    runpy.run_module("byzer_magic.runtime.driver.entry", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
