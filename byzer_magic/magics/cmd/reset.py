"""``%byzerllm reset``."""
from byzer_magic.magics.cmd import CommandParser, command

parser = CommandParser("reset", "Forget this kernel's tables, variables and setup (the Ray connection stays).")


@command(parser)
def reset_command(magic, args) -> None:
    magic.reset()
    print("byzer session reset: no tables, variables or setup")
