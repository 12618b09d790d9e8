"""``%byzerllm export NAME [--step N] [--to DIR]``."""
from byzer_magic.magics.cmd import CommandParser, command
from byzer_magic.magics.cmd.job import NAME_HELP, find_job

parser = CommandParser("export", "Write a checkpoint of a job (default: its latest) as a Hugging Face folder "
                                 "that from_pretrained loads.")
parser.add_argument("name", metavar="NAME", help=NAME_HELP)
parser.add_argument("--step", type=int, metavar="N", help="the checkpoint of step N (default: the latest)")
parser.add_argument("--to", metavar="DIR", help="where to write it (default: <job folder>/exports/step-<N>)")


@command(parser)
def export_command(magic, args) -> str:
    from byzer_magic.runtime.kernel.export import export_checkpoint  # noqa: PLC0415

    handle = find_job(magic, args.name)
    out = export_checkpoint(handle, args.step, args.to)
    print(f"job {handle.name}: checkpoint exported to {out} (AutoModelForCausalLM.from_pretrained opens it)")
    return str(out)
