"""``%byzerllm jobs``."""
from byzer_magic.magics.cmd import CommandParser, command

parser = CommandParser("jobs", "List training jobs: name, status, started, steps done/total, last loss, tokens/s.")


@command(parser)
def jobs_command(magic, args):
    from byzer_magic.runtime.kernel.jobs import list_jobs  # noqa: PLC0415
    from byzer_magic.widgets import jobs_table  # noqa: PLC0415

    magic.connect()
    return jobs_table(list_jobs(magic.session.jobs_dir))
