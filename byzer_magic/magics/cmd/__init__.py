"""``%byzerllm <sub-command> [args]``: one module per sub-command, each with its own argparse parser
(jupysql's ``cmd/`` is the model).

A sub-command module defines ``parser = CommandParser("name", description=...)`` and a function
``(magic, args: argparse.Namespace) -> object`` registered with ``@command(parser)``; the
description's first line is its one-line help. What the function returns is the line magic's value.
A bad argument, a ``ByzerError`` or a ``UsageError`` fails the cell with one line (no traceback).
"""
from __future__ import annotations

import argparse
import importlib
import shlex
from typing import TYPE_CHECKING, Callable

from IPython.core.error import UsageError

from byzer_magic.errors import did_you_mean

if TYPE_CHECKING:
    from byzer_magic.magics.magic import ByzerMagic

Command = Callable[["ByzerMagic", argparse.Namespace], object]
COMMANDS: dict[str, tuple["CommandParser", Command]] = {}
MODULES = ("help", "reset", "tables", "jobs", "attach", "logs", "stop", "tensorboard", "resume", "plan",
           "form", "export")


class _HelpShown(Exception):
    """``-h``/``--help``: the parser has printed its help; the command does not run."""


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are a ``UsageError`` naming the command and its usage."""

    def __init__(self, name: str, description: str, **kwargs):
        super().__init__(prog=f"%byzerllm {name}", description=description, add_help=True,
                         allow_abbrev=False, **kwargs)
        self.name = name

    @property
    def usage_line(self) -> str:
        """``%byzerllm NAME [--option X] ARG`` (``-h`` works but is not listed)."""
        return self.format_usage().strip().removeprefix("usage: ").replace(" [-h]", "")

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}; usage: {self.usage_line}")

    def exit(self, status: int = 0, message: str | None = None):
        if status:
            raise UsageError(f"{self.prog}: {message or 'bad arguments'}")
        raise _HelpShown()

    @property
    def summary(self) -> str:
        return (self.description or "").strip().splitlines()[0]


def command(parser: CommandParser) -> Callable[[Command], Command]:
    """Register a ``%byzerllm NAME`` sub-command with its parser."""
    def register(fn: Command) -> Command:
        COMMANDS[parser.name] = (parser, fn)
        return fn
    return register


def run_command(magic: "ByzerMagic", line: str) -> object:
    """Parse ``line`` (``NAME [args]``) with the command's parser and run it."""
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise UsageError(f"%byzerllm {line.strip()}: {err}") from None
    name = words.pop(0).lower() if words else "help"
    if name not in COMMANDS:
        raise UsageError(f'unknown %byzerllm command "{name}"{did_you_mean(name, COMMANDS)}; '
                         f"commands: {', '.join(sorted(COMMANDS))}")
    parser, fn = COMMANDS[name]
    try:
        args = parser.parse_args(words)
    except _HelpShown:
        return None
    return fn(magic, args)


def summaries() -> str:
    """One line per sub-command: its usage and the first line of its description."""
    usages = {name: parser.usage_line for name, (parser, _) in COMMANDS.items()}
    width = max(map(len, usages.values()), default=0)
    return "\n".join(f"  {usages[name]:<{width}}  {parser.summary}" for name, (parser, _) in sorted(COMMANDS.items()))


for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")
