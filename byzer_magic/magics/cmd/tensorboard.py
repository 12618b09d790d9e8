"""``%byzerllm tensorboard NAME [--keep]``."""
from byzer_magic.magics.cmd import CommandParser, command
from byzer_magic.magics.cmd.job import NAME_HELP, find_job

parser = CommandParser("tensorboard", "Embed TensorBoard for a job (started on 127.0.0.1, or reused).")
parser.add_argument("name", metavar="NAME", help=NAME_HELP)
parser.add_argument("--keep", action="store_true", help="the server outlives the kernel")


@command(parser)
def tensorboard_command(magic, args):
    from byzer_magic.widgets import tensorboard_frame  # noqa: PLC0415

    handle = find_job(magic, args.name)
    return tensorboard_frame(str(handle.tensorboard_dir), keep=args.keep,
                             proxy_url=magic.tensorboard_proxy_url or None)
