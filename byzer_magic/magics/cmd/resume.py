"""``%byzerllm resume NAME``."""
from byzer_magic.magics.cmd import CommandParser, command
from byzer_magic.magics.cmd.job import NAME_HELP, find_job

parser = CommandParser("resume", "Continue a stopped, failed or lost job from its latest checkpoint.")
parser.add_argument("name", metavar="NAME", help=NAME_HELP)


@command(parser)
def resume_command(magic, args):
    from byzer_magic.runtime.kernel.resume import resume  # noqa: PLC0415

    handle = find_job(magic, args.name)
    resumed = resume(handle.name, local_path_prefix=str(handle.job_dir.parent))
    print(f"resumed job {resumed.name} from {resumed.spec.job.resumed_from or 'the start (no checkpoint)'}")
    return magic.monitor(resumed)
