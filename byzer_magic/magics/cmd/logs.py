"""``%byzerllm logs [-f] [-n N] NAME``: the job's last log lines; ``-f`` follows the stream that Ray's
Jobs API sends (``runtime/kernel/logs.py``) until the job ends or the cell is interrupted."""
from byzer_magic.magics.cmd import CommandParser, command
from byzer_magic.magics.cmd.job import NAME_HELP, find_job

parser = CommandParser("logs", "Print a job's last log lines; -f follows them until the job ends or you "
                               "interrupt.")
parser.add_argument("name", metavar="NAME", help=NAME_HELP)
parser.add_argument("-f", "--follow", action="store_true", help="print new lines as the job writes them")
parser.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="how many last lines (default 100)")


@command(parser)
def logs_command(magic, args) -> None:
    from byzer_magic.runtime.kernel.jobs import TERMINAL  # noqa: PLC0415
    from byzer_magic.runtime.kernel.logs import tail_logs  # noqa: PLC0415

    handle = find_job(magic, args.name)
    text = handle.logs()
    if args.lines > 0:
        print("\n".join(text.splitlines()[-args.lines:]))
    if not args.follow or handle.status() in TERMINAL:
        return
    try:
        for chunk in tail_logs(handle.submission_id, skip=len(text)):
            print(chunk, end="", flush=True)
    except KeyboardInterrupt:
        pass
