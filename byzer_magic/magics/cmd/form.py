"""``%byzerllm form``."""
from byzer_magic.magics.cmd import CommandParser, command

parser = CommandParser("form", "A form for every `run command as LLM` parameter; Preview shows the cell, "
                               "Launch runs it.")


@command(parser)
def form_command(magic, args):
    from byzer_magic.widgets import ConfigForm  # noqa: PLC0415

    return ConfigForm(tables=list(magic.session.tables),
                      on_launch=lambda text: magic.shell.run_cell_magic("byzerllm", "", text))
