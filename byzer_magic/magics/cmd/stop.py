"""``%byzerllm stop NAME``."""
from byzer_magic.magics.cmd import CommandParser, command
from byzer_magic.magics.cmd.job import NAME_HELP, find_job

parser = CommandParser("stop", "Stop a job and free its workers; its checkpoints stay.")
parser.add_argument("name", metavar="NAME", help=NAME_HELP)


@command(parser)
def stop_command(magic, args) -> None:
    handle = find_job(magic, args.name)
    status = handle.stop()
    print(f"job {handle.name}: {status}; checkpoints in {handle.checkpoint_dir}")
