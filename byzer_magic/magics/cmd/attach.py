"""``%byzerllm attach NAME``."""
from byzer_magic.magics.cmd import CommandParser, command
from byzer_magic.magics.cmd.job import NAME_HELP, find_job

parser = CommandParser("attach", "Show a job's live monitor (status, progress, loss curve, stop button).")
parser.add_argument("name", metavar="NAME", help=NAME_HELP)


@command(parser)
def attach_command(magic, args):
    return magic.monitor(find_job(magic, args.name))
