"""``%byzerllm help``."""
from byzer_magic.magics.cmd import CommandParser, command

parser = CommandParser("help", "Show how to use %%byzerllm and the %byzerllm sub-commands.")


@command(parser)
def help_command(magic, args) -> None:
    print(magic.help_text())
