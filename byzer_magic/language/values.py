"""Option values and positions for ``session.py``: typed values (errors at their option), and where a
spot in a value (an interpolated select, a ``set``'s string) stands in the cell."""
from __future__ import annotations

import re
from typing import Any

from byzer_magic.errors import ByzerError
from byzer_magic.language.statements import Option, Span


def positive(option: Option, kind: type) -> int | float:
    pattern = r"\+?\d+" if kind is int else r"\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
    text = option.value.strip()
    if re.fullmatch(pattern, text) and kind(text) > 0:
        return kind(text)
    noun = "a positive whole number" if kind is int else "a positive number"
    raise at(ByzerError(f'{option.key} must be {noun}, not "{option.value}"'), option.span)


def size(option: Option) -> int:
    """A size in bytes: ``1048576``, ``512k``, ``64m``, ``64MB``, ``1g``, ``1GiB`` (units of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?\s*", option.value, re.I)
    factor = 1024 ** (" kmgt".index(match.group(2).lower()) if match and match.group(2) else 0)
    if match and float(match.group(1)) * factor >= 1:
        return int(float(match.group(1)) * factor)
    raise at(ByzerError(f'{option.key} must be a size such as "64m", "1g" or "1048576" (bytes), '
                        f'not "{option.value}"'), option.span)


def boolean(option: Option) -> bool:
    text = option.value.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise at(ByzerError(f'{option.key} must be "true" or "false", not "{option.value}"'), option.span)


def load_arguments(options: dict[str, Option]) -> dict[str, Any]:
    """A load's options (already checked by name) as the readers' keyword arguments."""
    from byzer_magic.runtime import tables  # noqa: PLC0415

    arguments: dict[str, Any] = {}
    for key, option in options.items():
        if key in ("wholetext", "header", "inferSchema"):
            arguments[{"inferSchema": "infer_schema"}.get(key, key)] = boolean(option)
        elif key == "chunkSize":
            arguments["chunk_size"] = size(option)
        elif key == "delimiter":
            if len(option.value) != 1:
                raise at(ByzerError(f'delimiter must be one character (such as "," or "\\t"), '
                                    f'not "{option.value}"'), option.span)
            arguments["delimiter"] = option.value
        elif key == "encoding":
            try:
                arguments["encoding"] = tables.codec_name(option.value)
            except ByzerError as err:
                raise at(err, option.span)
    return arguments


def text_position(cell_lines: list[str], start: Span, written: str, value: str, text: str, line: int,
                  column: int | None) -> tuple[int, int | None, str]:
    """Cell line, column and line text of ``(line, column)`` in ``text``: ``value`` after ``${}``,
    where ``value`` is ``written`` (as it stands in the cell from ``start``) after its escapes."""
    from byzer_magic.language.parser import raw_offset  # noqa: PLC0415

    cell_line = start.line + line - 1
    text_line = text.split("\n")[line - 1] if line <= text.count("\n") + 1 else ""
    offset = start.column - 1 if line == 1 else 0
    cell_text = cell_lines[cell_line - 1] if 0 < cell_line <= len(cell_lines) else ""
    if text != value:  # ${} changed it: show the line as it ran
        return cell_line, (offset + column) if column else None, cell_text[:offset] + text_line
    if column and written != value:  # escapes: the column as written
        value_offset = sum(len(x) + 1 for x in value.split("\n")[:line - 1]) + column - 1
        raw = raw_offset(written, value_offset)
        column = raw - (written.rfind("\n", 0, raw) + 1) + 1
    return cell_line, (offset + column) if column else None, cell_text


def find(span: Span, word: str, shift: int = 0) -> Span:
    """Where ``word`` first appears on the statement's first line, after its start (else ``span``)."""
    found = span.source_line.lower().find(word.lower(), span.column - 1) if word else -1
    return Span(span.line, found + 1 + shift, span.source_line) if found >= 0 else span


def at(err: ByzerError, span: Span) -> ByzerError:
    return err.located(line=span.line, column=span.column, source_line=span.source_line)
