"""``load json`` / ``load parquet`` / ``load csv``: Ray Data's readers over the files ``paths.py`` finds.

JSON is JSON lines (one object per line, as Spark's ``json`` source reads it), its columns inferred by
pyarrow. Parquet keeps its schema. CSV follows Spark's defaults: no header unless ``header`` (columns
``_c0``, ``_c1``, ...), ``,`` unless ``delimiter``, every column a string unless ``infer_schema``; the
first file's first line names the columns of all.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.tables.core import remember_schema
from byzer_magic.runtime.tables.errors import data_error
from byzer_magic.runtime.tables.paths import Files, resolve
from byzer_magic.runtime.tables.text import codec_name

if TYPE_CHECKING:
    import ray.data


def load_json(path: str) -> "ray.data.Dataset":
    """JSON lines files as a table (columns from the objects' keys)."""
    import ray.data  # noqa: PLC0415

    files = resolve(path, skip_underscore=True)
    return ray.data.read_json(files.paths, filesystem=files.filesystem, file_extensions=None)


def load_parquet(path: str) -> "ray.data.Dataset":
    """Parquet files as a table, with their schema."""
    import ray.data  # noqa: PLC0415

    files = resolve(path, skip_underscore=True)
    return ray.data.read_parquet(files.paths, filesystem=files.filesystem, file_extensions=None)


def load_csv(path: str, *, header: bool = False, delimiter: str = ",", encoding: str = "utf-8",
             infer_schema: bool = False) -> "ray.data.Dataset":
    """CSV files as a table (see the module's docstring for the columns' names and types)."""
    import pyarrow.csv as pacsv  # noqa: PLC0415
    import ray.data  # noqa: PLC0415

    if len(delimiter) != 1:
        raise ByzerError(f'the delimiter must be one character, not "{delimiter}"')
    encoding = codec_name(encoding)
    files = resolve(path, skip_underscore=True)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    names = _column_names(files, header, parse, encoding)
    read = pacsv.ReadOptions(column_names=names, skip_rows=1 if header else 0, encoding=encoding)
    convert = None if infer_schema else pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
    options = {"read_options": read, "parse_options": parse}
    if convert is not None:
        options["convert_options"] = convert
    ds = ray.data.read_csv(files.paths, filesystem=files.filesystem, file_extensions=None, **options)
    if not infer_schema:
        remember_schema(ds, pa.schema([(n, pa.string()) for n in names]))
    return ds


def _column_names(files: Files, header: bool, parse, encoding: str) -> list[str]:
    """The first file's header (``header``) or ``_c0, _c1, ...`` for as many columns as its first row."""
    import pyarrow.csv as pacsv  # noqa: PLC0415

    first = files.paths[0]
    read = pacsv.ReadOptions(autogenerate_column_names=not header, encoding=encoding, block_size=1 << 20)
    try:
        with files.filesystem.open_input_stream(first) as stream:
            names = pacsv.open_csv(stream, read_options=read, parse_options=parse).schema.names
    except (pa.ArrowInvalid, OSError) as exc:
        error = data_error(exc)
        raise ByzerError(f"cannot read the first line of {files.shown(first)}: "
                         f"{error.message if error else str(exc).splitlines()[0]}") from None
    if header:
        return names
    return [f"_c{i}" for i in range(len(names))]
