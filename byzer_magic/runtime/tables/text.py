"""``load text``: files read in pieces of at most ``chunk_size`` bytes, split at line ends.

A file is cut into byte ranges; each range is read by a Ray task and owns the lines that start in it
(the last one read on past the range's end), so no task holds more than a piece and a line, whatever
the file's size. Lines follow Spark's ``text`` source: split on ``\\n`` (a ``\\r`` before it is
dropped), empty lines kept, no row after a final newline. ``wholetext``: a file is one row, and a file
above ``chunk_size`` is several rows, its pieces in order (their concatenation is the file).

``encoding`` is any ASCII-compatible codec Python knows (``utf-8``, ``gb18030``, ``gbk``, ``big5``,
``latin-1``, ...): the byte ``\\n`` is a line end in all of them, never part of a character. Bytes that do
not decode become U+FFFD; ``check_decoding`` finds them before anything runs (a sample of the files), and
each read task logs the files and bytes it replaced.
"""
from __future__ import annotations

import codecs
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime.tables.core import TEXT_SCHEMA, remember_schema
from byzer_magic.runtime.tables.paths import Files, resolve

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    import ray.data

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
MIN_TASK_BYTES = 16 * 1024 * 1024  # the smallest read task _read_tasks makes to even out the end
COMMON_ENCODINGS = ("utf-8", "utf-8-sig", "gb18030", "gbk", "gb2312", "big5", "shift_jis", "euc-jp", "euc-kr",
                    "latin-1", "cp1252")
SAMPLE_FILES, SAMPLE_BYTES = 64, 1024 * 1024  # what check_decoding reads: files, bytes of each
_log = logging.getLogger(__name__)


def codec_name(encoding: str) -> str:
    """The codec's canonical name; a ByzerError for one Python lacks or that cannot split lines."""
    try:
        info = codecs.lookup(encoding.strip())
    except LookupError:
        raise ByzerError(f'unknown encoding "{encoding}"{did_you_mean(encoding, COMMON_ENCODINGS)}; '
                         f"for example: {', '.join(COMMON_ENCODINGS)}") from None
    if "\n".encode(info.name) != b"\n" or "a".encode(info.name) != b"a":
        raise ByzerError(f'encoding "{encoding}" is not ASCII-compatible (as utf-16 and utf-32 are not), '
                         "so its lines cannot be split; convert the files to utf-8")
    return info.name


def load_text(path: str, *, wholetext: bool, encoding: str = "utf-8",
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> "ray.data.Dataset":
    """Text files as a table ``(value, file)``: a row per line, or per file (``wholetext``), a file
    above ``chunk_size`` bytes being a row per piece (see the module's docstring)."""
    return text_table(resolve(path), wholetext=wholetext, encoding=codec_name(encoding), chunk_size=chunk_size)


def text_table(files: Files, *, wholetext: bool, encoding: str, chunk_size: int) -> "ray.data.Dataset":
    import ray.data  # noqa: PLC0415

    from byzer_magic.runtime import cluster  # noqa: PLC0415

    slots = cluster.cpu_slots() if ray.is_initialized() else (os.cpu_count() or 1)
    items = _read_tasks(files, chunk_size, wholetext=wholetext, slots=slots)
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 1024))
    ds = ds.map_batches(_read_task, batch_size=1, batch_format="pyarrow",
                        fn_kwargs={"filesystem": files.filesystem, "prefix": files.prefix,
                                   "wholetext": wholetext, "encoding": encoding})
    return remember_schema(ds, TEXT_SCHEMA)


def read_text_here(files: Files, *, wholetext: bool, encoding: str = "utf-8",
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[pa.Table]:
    """``text_table``'s rows, read in this process one piece at a time (for inputs too small to be worth
    starting Ray Data's tasks: driver/inputs.py)."""
    for item in _read_tasks(files, chunk_size, wholetext=wholetext):
        yield _read_task(pa.Table.from_pylist([item]), filesystem=files.filesystem, prefix=files.prefix,
                         wholetext=wholetext, encoding=codec_name(encoding))


def _read_tasks(files: Files, chunk_size: int, *, wholetext: bool, slots: int = 0) -> list[dict]:
    """The files cut into pieces of at most ``chunk_size`` bytes, grouped into read tasks of at most
    ``chunk_size`` bytes (a piece alone may hold more: a line read on past its end).

    With ``slots`` (the CPUs that run the tasks) the tasks get smaller towards the end, none above a
    ``2 * slots``-th of the bytes still to assign nor below ``MIN_TASK_BYTES`` (guided self-scheduling):
    the CPUs finish together, where one read the last ``chunk_size`` alone (a 1 GB corpus, 2 CPUs: 5 s
    of one idle core, docs/BENCHMARKS.md). Lines are cut anywhere; a ``wholetext`` piece is a row, so its
    cuts stay at multiples of ``chunk_size`` whatever the task sizes."""
    if chunk_size < 1:
        raise ByzerError(f"the chunk size must be at least 1 byte, not {chunk_size}")
    tasks, current, held, left = [], _Task(), 0, sum(files.sizes)
    for path, size in zip(files.paths, files.sizes):
        start = 0
        while True:  # an empty file too: one empty piece
            target = chunk_size if not slots else min(chunk_size, max(MIN_TASK_BYTES, left // (2 * slots)))
            grid = (start // chunk_size + 1) * chunk_size
            end = min(size, grid if wholetext else start + max(1, target - held))
            if current.paths and held + end - start > target:
                tasks.append(current)
                current, held = _Task(), 0
                continue
            current.add(path, start, end, size)
            held, left, start = held + end - start, left - (end - start), end
            if start >= size:
                break
    tasks.append(current)
    return [t.__dict__ for t in tasks]


class _Task:
    """The pieces one read task reads: (path, start, end, file size) each."""

    def __init__(self):
        self.paths, self.starts, self.ends, self.sizes = [], [], [], []

    def add(self, path: str, start: int, end: int, size: int) -> None:
        self.paths.append(path)
        self.starts.append(start)
        self.ends.append(end)
        self.sizes.append(size)


def _read_task(batch: pa.Table, *, filesystem: "pafs.FileSystem", prefix: str, wholetext: bool,
               encoding: str) -> pa.Table:
    values, names = [], []
    row = batch.to_pylist()[0]
    for path, start, end, size in zip(row["paths"], row["starts"], row["ends"], row["sizes"]):
        data = read_piece(filesystem, path, start, end, size)
        if not data and start > 0:
            continue  # no line starts in this piece: a long line of an earlier one covers it
        text, bad = decode(data, encoding)
        if bad:
            _log.warning("%s%s: %d bytes in [%d, %d) are not valid %s and became U+FFFD",
                         prefix, path, bad, start, end, encoding)
        if wholetext:
            lines = pa.array([text], pa.string())
        else:
            lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.string()), "\n"))
            if text.endswith("\n") or not text:  # no row after a final newline
                lines = lines.slice(0, len(lines) - 1)
            lines = pc.replace_substring_regex(lines, r"\r$", "")
        values.append(lines)
        names.extend([prefix + path] * len(lines))
    column = pa.chunked_array(values, pa.string()) if values else pa.chunked_array([], pa.string())
    return pa.Table.from_arrays([column, pa.array(names, pa.string())], schema=TEXT_SCHEMA)


def read_piece(fs: "pafs.FileSystem", path: str, start: int, end: int, size: int) -> bytes:
    """The bytes of the lines that start in ``[start, end)`` of the file, each line whole."""
    with fs.open_input_file(path) as f:
        if start == 0:
            data = f.read_at(end, 0) if end else b""
        else:
            head = f.read_at(end - start + 1, start - 1)  # a line starts at p when byte p - 1 is '\n'
            newline = head.find(b"\n", 0, len(head) - 1)
            if newline < 0:
                return b""
            data = head[newline + 1:]
        position = end
        while position < size and not data.endswith(b"\n"):
            more = f.read_at(min(1024 * 1024, size - position), position)
            newline = more.find(b"\n")
            data += more if newline < 0 else more[:newline + 1]
            position += len(more)
        return data


_bad = threading.local()


def _count_and_replace(exc: UnicodeDecodeError):
    _bad.count = getattr(_bad, "count", 0) + (exc.end - exc.start)
    return "\ufffd", exc.end


codecs.register_error("byzer_magic.count_replace", _count_and_replace)


def decode(data: bytes, encoding: str, final: bool = True) -> tuple[str, int]:
    """``data`` decoded, and how many of its bytes did not decode (they became U+FFFD)."""
    try:
        return data.decode(encoding), 0
    except UnicodeDecodeError:
        pass
    _bad.count = 0
    text = codecs.getincrementaldecoder(encoding)(errors="byzer_magic.count_replace").decode(data, final=final)
    return text, _bad.count


@dataclass(frozen=True)
class Undecodable:
    """A file with bytes that do not decode: how many, in how many bytes read of its ``size``."""
    file: str
    bad: int
    checked: int
    size: int


def check_decoding(files: Files, encoding: str) -> list[Undecodable]:
    """The files (of up to SAMPLE_FILES, spread over the list) whose first SAMPLE_BYTES hold bytes
    that do not decode in ``encoding``."""
    n = len(files.paths)
    picks = sorted({i * n // SAMPLE_FILES for i in range(SAMPLE_FILES)}) if n > SAMPLE_FILES else range(n)

    def check(i: int) -> Undecodable | None:
        path, size = files.paths[i], files.sizes[i]
        try:
            with files.filesystem.open_input_file(path) as f:
                data = f.read_at(min(size, SAMPLE_BYTES), 0) if size else b""
        except OSError:
            return None  # the read itself will report it
        _, bad = decode(data, encoding, final=len(data) == size)
        return Undecodable(files.shown(path), bad, len(data), size) if bad else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [u for u in pool.map(check, picks) if u is not None]


def decoding_note(found: list[Undecodable], encoding: str, files: Files) -> str:
    """What the cell says about ``check_decoding``'s findings."""
    shown = ", ".join(f"{u.file} ({u.bad:,} of {u.checked:,} bytes{'' if u.checked == u.size else ' read'})"
                      for u in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    sampled = len(files.paths) > SAMPLE_FILES or any(u.checked < u.size for u in found)
    scope = f" (checked: the first {SAMPLE_BYTES // 1024 // 1024} MiB of up to {SAMPLE_FILES} files)" \
        if sampled else ""
    guess = next((name for name in ("gb18030", "big5", "shift_jis") if name != encoding and _decodes(
        files, found[0], name)), None)
    hint = f'write encoding="{guess}" in the load: these bytes decode as {guess}' if guess else \
        'write encoding="..." (the files\' encoding) in the load'
    return (f"{len(found)} file{'s' if len(found) != 1 else ''} not valid {encoding}{scope}, bytes that do not "
            f"decode become U+FFFD: {shown}; {hint}")


def _decodes(files: Files, found: Undecodable, encoding: str) -> bool:
    path = files.paths[[files.shown(p) for p in files.paths].index(found.file)]
    with files.filesystem.open_input_file(path) as f:
        data = f.read_at(found.checked, 0)
    return decode(data, encoding, final=found.checked == found.size)[1] == 0


def load_text_checked(path: str, *, wholetext: bool, encoding: str = "utf-8",
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple["ray.data.Dataset", str | None]:
    """``load_text``, and what ``check_decoding`` found, in words (None when every byte decodes)."""
    name = codec_name(encoding)
    files = resolve(path)
    found = check_decoding(files, name)
    ds = text_table(files, wholetext=wholetext, encoding=name, chunk_size=chunk_size)
    return ds, (decoding_note(found, name, files) if found else None)
