"""``%byzerllm plan``."""
from IPython.core.error import UsageError

from byzer_magic.magics.cmd import CommandParser, command

parser = CommandParser("plan", "Plan the last `run command as LLM` of this kernel without training "
                               "(tokens, steps, memory, advice).")


@command(parser)
def plan_command(magic, args):
    from dataclasses import replace  # noqa: PLC0415

    from byzer_magic.language.statements import Option  # noqa: PLC0415

    statement = getattr(magic.session, "last_llm_statement", None)
    if statement is None:
        raise UsageError("no `run command as LLM` has been run in this kernel yet; "
                         'add dryRun="true" to one, or run one first')
    options = tuple(o for o in statement.options if o.key != "dryRun") + (
        Option("dryRun", "true", statement.span),)
    return magic.session.run_statement(replace(statement, options=options))
