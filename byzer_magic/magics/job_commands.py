"""``%byzerllm jobs | attach | logs | stop | tensorboard | resume | plan | form``: the job API and the
widgets, one line each."""
from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from byzer_magic.magics.commands import command

if TYPE_CHECKING:
    from byzer_magic.magics.magic import ByzerMagic


def _job(magic: "ByzerMagic", args: str):
    from byzer_magic.runtime.kernel.jobs import get_job  # noqa: PLC0415

    name = args.split()[0] if args.split() else ""
    if not name:
        raise UsageError("name the job, e.g. %byzerllm attach sfft-me-20260101-120000 (see %byzerllm jobs)")
    magic.connect()
    return get_job(name, magic.session.jobs_dir)


@command("jobs")
def jobs_command(magic: "ByzerMagic", args: str):
    """List training jobs: name, status, started, steps done/total, last loss, tokens/s."""
    from byzer_magic.runtime.kernel.jobs import list_jobs  # noqa: PLC0415
    from byzer_magic.widgets import jobs_table  # noqa: PLC0415

    magic.connect()
    return jobs_table(list_jobs(magic.session.jobs_dir))


@command("attach")
def attach_command(magic: "ByzerMagic", args: str):
    """Show a job's live monitor (status, progress, loss curve, stop button): %byzerllm attach NAME"""
    from byzer_magic.widgets import JobMonitor  # noqa: PLC0415

    return JobMonitor(_job(magic, args), proxy_url=magic.tensorboard_proxy_url or None)


@command("logs")
def logs_command(magic: "ByzerMagic", args: str) -> None:
    """Print a job's last log lines; -f follows them until you interrupt: %byzerllm logs [-f] NAME"""
    words = shlex.split(args)
    follow = "-f" in words
    handle = _job(magic, " ".join(w for w in words if w != "-f"))
    text = handle.logs()
    print("\n".join(text.splitlines()[-100:]))
    seen = len(text)
    try:
        while follow and handle.status() not in ("SUCCEEDED", "FAILED", "STOPPED", "LOST"):
            time.sleep(2)
            text = handle.logs()
            print(text[seen:], end="")
            seen = len(text)
    except KeyboardInterrupt:
        pass


@command("stop")
def stop_command(magic: "ByzerMagic", args: str) -> None:
    """Stop a job and free its workers; its checkpoints stay: %byzerllm stop NAME"""
    handle = _job(magic, args)
    status = handle.stop()
    print(f"job {handle.name}: {status}; checkpoints in {handle.checkpoint_dir}")


@command("tensorboard")
def tensorboard_command(magic: "ByzerMagic", args: str):
    """Embed TensorBoard for a job (started on 127.0.0.1, or reused): %byzerllm tensorboard NAME [--keep]"""
    from byzer_magic.widgets import tensorboard_frame  # noqa: PLC0415

    handle = _job(magic, args)
    return tensorboard_frame(str(handle.tensorboard_dir), keep="--keep" in args.split(),
                             proxy_url=magic.tensorboard_proxy_url or None)


@command("resume")
def resume_command(magic: "ByzerMagic", args: str):
    """Continue a stopped, failed or lost job from its latest checkpoint: %byzerllm resume NAME"""
    from byzer_magic.runtime.kernel.resume import resume  # noqa: PLC0415
    from byzer_magic.widgets import JobMonitor  # noqa: PLC0415

    handle = _job(magic, args)
    resumed = resume(handle.name, local_path_prefix=str(handle.job_dir.parent))
    print(f"resumed job {resumed.name} from {resumed.spec.get('resumed_from') or 'the start (no checkpoint)'}")
    return JobMonitor(resumed, proxy_url=magic.tensorboard_proxy_url or None)


@command("plan")
def plan_command(magic: "ByzerMagic", args: str):
    """Plan the last `run command as LLM` of this kernel without training (tokens, steps, memory, advice)."""
    statement = getattr(magic.session, "last_llm_statement", None)
    if statement is None:
        raise UsageError("no `run command as LLM` has been run in this kernel yet; "
                         'add dryRun="true" to one, or run one first')
    from dataclasses import replace  # noqa: PLC0415

    from byzer_magic.language.statements import Option  # noqa: PLC0415

    options = tuple(o for o in statement.options if o.key != "dryRun") + (
        Option("dryRun", "true", statement.span),)
    return magic.session.run_statement(replace(statement, options=options))


@command("form")
def form_command(magic: "ByzerMagic", args: str):
    """A form for every `run command as LLM` parameter; Preview shows the cell, Launch runs it."""
    from byzer_magic.widgets import ConfigForm  # noqa: PLC0415

    return ConfigForm(tables=list(magic.session.tables),
                      on_launch=lambda text: magic.shell.run_cell_magic("byzerllm", "", text))
