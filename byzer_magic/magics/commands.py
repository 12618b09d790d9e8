"""``%byzerllm <sub-command> [args]``: a registry of sub-commands.

A sub-command is a function ``(magic, args: str) -> object`` registered with ``@command("name")``;
its docstring's first line is its one-line help. To add one, define it in any module imported by
``magics/magic.py`` (or here). What it returns is the line magic's value; a ``ByzerError`` or
``UsageError`` it raises fails the cell with its message.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from IPython.core.error import UsageError

from byzer_magic.errors import did_you_mean

if TYPE_CHECKING:
    from byzer_magic.magics.magic import ByzerMagic

Command = Callable[["ByzerMagic", str], object]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    """Register a ``%byzerllm NAME`` sub-command."""
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn
    return register


def run_command(magic: "ByzerMagic", line: str) -> object:
    name, _, args = line.strip().partition(" ")
    if not name:
        name = "help"
    fn = COMMANDS.get(name.lower())
    if fn is None:
        raise UsageError(f'unknown %byzerllm command "{name}"{did_you_mean(name, COMMANDS)}; '
                         f"commands: {', '.join(sorted(COMMANDS))}")
    return fn(magic, args.strip())


def summaries() -> str:
    """One line per sub-command: its name and the first line of its docstring."""
    width = max(map(len, COMMANDS), default=0)
    return "\n".join(f"  %byzerllm {name:<{width}}  {(fn.__doc__ or '').strip().splitlines()[0]}"
                     for name, fn in sorted(COMMANDS.items()))


@command("help")
def help_command(magic: "ByzerMagic", args: str) -> None:
    """Show how to use %%byzerllm and the %byzerllm sub-commands."""
    print(magic.help_text())


@command("reset")
def reset_command(magic: "ByzerMagic", args: str) -> None:
    """Forget this kernel's tables, variables and setup (the Ray connection stays)."""
    magic.reset()
    print("byzer session reset: no tables, variables or setup")


@command("tables")
def tables_command(magic: "ByzerMagic", args: str):
    """List the session's tables: name, schema, and row count when known without reading."""
    import pandas as pd  # noqa: PLC0415

    from byzer_magic.magics.display import schema_text  # noqa: PLC0415
    from byzer_magic.runtime import tables  # noqa: PLC0415

    session = magic.session
    rows = [{"table": name, "schema": schema_text(tables.schema_of(ds)), "rows": tables.cheap_count(ds)}
            for name, ds in session.tables.items()]
    if not rows:
        print("no tables yet: `load`, `select` and `run ... as TableRepartition` make them")
        return None
    return pd.DataFrame(rows, columns=["table", "schema", "rows"]).astype({"rows": "Int64"})
