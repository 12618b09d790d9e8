"""``${name}`` substitution in statement values, done when a statement runs.

A name is looked up in the cell's variables (``set name=...;``), then in ``fallback`` (the notebook's
Python namespace, turned into text with ``str``). An unknown name is a ``ByzerError`` that points at
the ``${`` in the cell and suggests a close name.

``\\${`` is the escape: it stands for a literal ``${`` and is never substituted (``\\${name}`` gives
``${name}``). A ``${`` not followed by ``name}`` is an error, so that a typo such as ``${name`` is
not passed on silently. Substitution is one pass: a value that itself contains ``${...}`` is inserted
as it is.
"""
from __future__ import annotations

import re
from typing import Mapping

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.language.statements import Span

_REFERENCE = re.compile(r"\\\$\{|\$\{\s*(\w+)\s*\}|\$\{")


def interpolate(text: str, variables: Mapping[str, str], fallback: Mapping[str, object] | None = None,
                *, span: Span | None = None) -> str:
    """``text`` with every ``${name}`` replaced; ``span`` is where ``text`` starts in the cell."""
    fallback = fallback or {}

    def replace(match: re.Match) -> str:
        reference = match.group()
        if reference == "\\${":
            return "${"
        name = match.group(1)
        if name is None:
            raise _error("expected a variable name and '}' after '${' (write \\${ for a literal ${)",
                         text, match.start(), reference, span)
        if name in variables:
            return str(variables[name])
        if name in fallback:
            return str(fallback[name])
        known = list(variables) + [k for k in fallback if isinstance(k, str) and not k.startswith("_")]
        raise _error(f"undefined variable ${{{name}}}{did_you_mean(name, known)}", text, match.start(),
                     reference, span)

    return _REFERENCE.sub(replace, text)


def _error(message: str, text: str, offset: int, reference: str, span: Span | None) -> ByzerError:
    if span is None:
        return ByzerError(message)
    line, column, source_line = _locate(text, offset, reference, span)
    return ByzerError(message, line=line, column=column, source_line=source_line)


def _locate(text: str, offset: int, reference: str, span: Span) -> tuple[int, int, str]:
    """The cell position of ``text[offset]``, given that ``text`` starts at ``span``.

    ``text`` may be a value with its quotes removed while ``span`` points a little before it (an
    option's span is its key): when the spot computed does not hold ``reference`` but the line does,
    after the span, the line's own occurrence is used.
    """
    newlines = text.count("\n", 0, offset)
    if newlines == 0:
        column = span.column + offset
        source = span.source_line
        if source and not source.startswith(reference, column - 1):
            nth = text.count(reference, 0, offset)  # the same occurrence of it on the line
            found = span.column - 2
            for _ in range(nth + 1):
                found = source.find(reference, found + 1)
                if found < 0:
                    break
            if found >= 0:
                column = found + 1
        return span.line, column, source
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    source = text[line_start:line_end if line_end >= 0 else len(text)]
    return span.line + newlines, offset - line_start + 1, source
