"""Tables are Ray Datasets: load text files, run DuckDB SQL over them, repartition them.

Nothing here pulls a table into the calling process. A ``select`` that only projects and filters the
rows of one table runs batch by batch (DuckDB on each Arrow block, in Ray tasks); any other query
(joins, grouping, ordering, windows, unions, subqueries) runs once over the referenced tables in a
single Ray task. Every query is first checked by DuckDB against empty tables of the inputs' schemas,
so that a misspelt column or a syntax error is reported at once, with its position, before Ray works.
"""
from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import weakref
from typing import TYPE_CHECKING, Iterable, Mapping, NamedTuple

import duckdb
import pyarrow as pa

from byzer_magic.errors import ByzerError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd
    import ray.data

TEXT_SCHEMA = pa.schema([("value", pa.string()), ("file", pa.string())])

# Schemas we know without running anything; ``Dataset.schema()`` would execute the plan.
_SCHEMAS: "weakref.WeakKeyDictionary[ray.data.Dataset, pa.Schema]" = weakref.WeakKeyDictionary()


class SqlError(ByzerError):
    """A DuckDB error; ``sql_line``/``sql_column`` (1-based) locate it in the SQL text, if known."""

    def __init__(self, message: str, sql_line: int | None = None, sql_column: int | None = None):
        super().__init__(message)
        self.sql_line, self.sql_column = sql_line, sql_column


class TableSummary(NamedTuple):
    row_count: int | None  # None when counting would mean running the whole plan
    schema: pa.Schema
    head: "pd.DataFrame"


def configure_ray_data(progress_bars: bool = False, *, single_machine: bool = False) -> None:
    """Ray Data's progress bars and logs on or off (they fill a notebook cell quickly; errors reach
    the user as ByzerErrors anyway). ``single_machine`` (the embedded head): at most one hash-shuffle
    aggregator per core, not one per logical CPU (the head advertises more CPUs than cores)."""
    import ray.data  # noqa: PLC0415

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress_bars
    if single_machine:
        context.max_hash_shuffle_aggregators = os.cpu_count() or 1
    logging.getLogger("ray.data").setLevel(logging.INFO if progress_bars else logging.CRITICAL)


# ----------------------------------------------------------------------------------------- load
def expand_paths(path: str) -> list[str]:
    """The files ``path`` names: a file, a folder (all files below it), or a glob (``**`` too).
    ``file://`` is optional. Hidden files (``.name``) are skipped, as Spark and glob do."""
    local = re.sub(r"^file://", "", path.strip())
    local = os.path.expanduser(local)
    if not local:
        raise ByzerError("the path is empty")
    matches = sorted(glob.glob(local, recursive=True)) if glob.has_magic(local) else [local]
    files: list[str] = []
    for match in matches:
        if os.path.isdir(match):
            for root, dirs, names in os.walk(match):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
        elif os.path.isfile(match):
            files.append(match)
    if not files:
        if glob.has_magic(local):
            raise ByzerError(f"no files match {path}")
        reason = "holds no files" if os.path.isdir(local) else "does not exist"
        raise ByzerError(f"no files to load: {path} {reason}")
    return [os.path.abspath(f) for f in dict.fromkeys(files)]


def load_text(path: str, *, wholetext: bool) -> "ray.data.Dataset":
    """Text files as a table ``(value, file)``: one row per file (``wholetext``) or per line.

    Lines follow Spark's ``text`` source: split on ``\\n`` (a ``\\r`` before it is dropped), empty
    lines kept, no row after a final newline. Bytes that are not UTF-8 become U+FFFD."""
    import ray.data  # noqa: PLC0415

    files = expand_paths(path)
    ds = ray.data.read_binary_files(files, include_paths=True)
    ds = ds.map_batches(_whole_files if wholetext else _file_lines, batch_format="pyarrow", batch_size=None)
    _SCHEMAS[ds] = TEXT_SCHEMA
    return ds


def _decoded(batch: pa.Table) -> Iterable[tuple[str, str]]:
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist()):
        yield data.decode("utf-8", errors="replace"), path


def _whole_files(batch: pa.Table) -> pa.Table:
    rows = list(_decoded(batch))
    return pa.table([[r[0] for r in rows], [r[1] for r in rows]], schema=TEXT_SCHEMA)


def _file_lines(batch: pa.Table) -> pa.Table:
    values, files = [], []
    for text, path in _decoded(batch):
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        values.extend(line[:-1] if line.endswith("\r") else line for line in lines)
        files.extend([path] * len(lines))
    return pa.table([values, files], schema=TEXT_SCHEMA)


# ------------------------------------------------------------------------------------------ SQL
def schema_of(ds: "ray.data.Dataset") -> pa.Schema:
    """The table's Arrow schema; known for tables made here, else asked of Ray (may run a block)."""
    known = _SCHEMAS.get(ds)
    if known is not None:
        return known
    schema = ds.schema()
    arrow = pa.schema([]) if schema is None else getattr(schema, "base_schema", schema)
    if not isinstance(arrow, pa.Schema):
        arrow = pa.schema(list(zip(schema.names, schema.types)))
    _SCHEMAS[ds] = arrow
    return arrow


def run_sql(sql: str, tables: Mapping[str, "ray.data.Dataset"]) -> "ray.data.Dataset":
    """The result of a DuckDB query over ``tables`` (matched case-insensitively), as a Dataset."""
    tree = _parse(sql)
    by_lower = {name.lower(): (name, ds) for name, ds in tables.items()}
    referenced: dict[str, tuple[str, "ray.data.Dataset"]] = {}
    ctes = {key.lower() for key in _cte_names(tree)}
    for name, offset in _table_refs(tree):
        if name.lower() in ctes:
            continue
        if name.lower() not in by_lower:
            line, column = _position(sql, offset)
            listing = ", ".join(sorted(tables)) or "none yet"
            raise SqlError(f"unknown table {name}{did_you_mean(name, tables)}; tables: {listing}", line, column)
        referenced[name.lower()] = by_lower[name.lower()]
    schemas = {name: schema_of(ds) for name, ds in referenced.values()}
    out_schema = _validate(sql, schemas)

    if len(referenced) == 1 and _is_row_wise(tree):
        (name, ds), = referenced.values()
        result = ds.map_batches(_query_batch, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"sql": sql, "table": name})
    else:
        result = _materialised(sql, {name: ds for name, ds in referenced.values()}, schemas)
    _SCHEMAS[result] = out_schema
    return result


def _parse(sql: str) -> dict:
    with duckdb.connect() as con:
        tree = json.loads(con.execute("select json_serialize_sql(?)", [sql]).fetchone()[0])
        if tree.get("error"):
            try:  # let DuckDB say it with its position (json_serialize_sql's message has none)
                con.execute(sql)
            except duckdb.Error as exc:
                raise sql_error(exc, sql) from None
            raise SqlError(tree.get("error_message", "not a query").splitlines()[0])
    if len(tree["statements"]) != 1:
        raise SqlError("expected one query")
    return tree["statements"][0]["node"]


def _walk(node) -> Iterable[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _table_refs(tree: dict) -> list[tuple[str, int]]:
    return [(n["table_name"], n.get("query_location", 0)) for n in _walk(tree)
            if n.get("type") == "BASE_TABLE" and not n.get("schema_name") and not n.get("catalog_name")]


def _cte_names(tree: dict) -> list[str]:
    return [entry["key"] for n in _walk(tree) for entry in (n.get("cte_map") or {}).get("map", [])]


def _aggregate_functions() -> frozenset[str]:
    global _AGGREGATES
    if _AGGREGATES is None:
        with duckdb.connect() as con:
            rows = con.execute("select distinct function_name from duckdb_functions() "
                               "where function_type = 'aggregate'").fetchall()
        _AGGREGATES = frozenset(r[0].lower() for r in rows)
    return _AGGREGATES


_AGGREGATES: frozenset[str] | None = None


def _is_row_wise(tree: dict) -> bool:
    """True for ``select <expressions> from <one table> [where ...]``: each row on its own."""
    if tree.get("type") != "SELECT_NODE" or tree.get("modifiers") or (tree.get("cte_map") or {}).get("map"):
        return False
    if (tree.get("from_table") or {}).get("type") != "BASE_TABLE":
        return False
    if tree.get("group_expressions") or tree.get("group_sets") or tree.get("aggregate_handling") != \
            "STANDARD_HANDLING" or any(tree.get(k) for k in ("having", "qualify", "sample")):
        return False
    aggregates = _aggregate_functions()
    for node in _walk([tree.get("select_list"), tree.get("where_clause")]):
        if node.get("class") in ("SUBQUERY", "WINDOW") or (
                node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in aggregates):
            return False
    return True


def _arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    relation = con.sql(sql)
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def _empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def _validate(sql: str, schemas: Mapping[str, pa.Schema]) -> pa.Schema:
    """Run the query on empty inputs: DuckDB binds every name (and we learn the result's schema)."""
    with duckdb.connect() as con:
        for name, schema in schemas.items():
            con.register(name, _empty(schema))
        try:
            con.execute(sql)  # (``con.sql`` would leave the position out of DuckDB's message)
            return _arrow(con, sql).schema
        except duckdb.Error as exc:
            raise sql_error(exc, sql) from None


def _query_batch(batch: pa.Table, *, sql: str, table: str) -> pa.Table:
    with duckdb.connect(config={"threads": 1}) as con:
        con.register(table, batch)
        return _arrow(con, sql)


def _materialised(sql: str, inputs: Mapping[str, "ray.data.Dataset"], schemas: Mapping[str, pa.Schema]):
    """Run the query once over whole tables, in a Ray task: the rows go to the object store and to
    that task, never through this process."""
    import ray.data  # noqa: PLC0415

    refs = {name: ds.to_arrow_refs() for name, ds in inputs.items()}
    table_ref = _remote_query_tables().remote(sql, refs, dict(schemas))
    try:
        return ray.data.from_arrow_refs([table_ref])
    except Exception as exc:
        error = data_error(exc, sql)
        if error is None:
            raise
        raise error from None


@functools.cache
def _remote_query_tables():
    import ray  # noqa: PLC0415

    return ray.remote(num_cpus=1)(_query_tables)


def _query_tables(sql: str, refs: Mapping[str, list], schemas: Mapping[str, pa.Schema]) -> pa.Table:
    import ray  # noqa: PLC0415

    with duckdb.connect() as con:
        for name, table_refs in refs.items():
            blocks = [b for b in ray.get(list(table_refs)) if b.num_rows]
            table = pa.concat_tables(blocks, promote_options="permissive") if blocks else _empty(schemas[name])
            con.register(name, table)
        return _arrow(con, sql)


# --------------------------------------------------------------------------------------- errors
def sql_error(exc: duckdb.Error, sql: str | None = None) -> SqlError:
    """DuckDB's message in one line, located by its ``LINE n:`` marker when there is one."""
    text = str(exc)
    lines = [line for line in text.split("\n\nLINE ")[0].splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and re.match(r"(Did you mean|Candidate bindings)", lines[1]):
        message += " " + lines[1]
    line, column = _caret(text, sql)
    return SqlError(message, line, column)


def _caret(text: str, sql: str | None) -> tuple[int | None, int | None]:
    match = re.search(r"^LINE (\d+): (.*)\n( *)\^", text, re.M)
    if not match:
        return None, None
    line = int(match.group(1))
    shown, at = match.group(2), len(match.group(3)) - len(f"LINE {line}: ")
    if not shown.startswith("...") or sql is None:
        return line, at + 1
    sql_lines = sql.split("\n")
    actual = sql_lines[line - 1] if line <= len(sql_lines) else ""
    core = shown[3:].removesuffix("...")
    start = actual.find(core)
    return line, (start + at - 3 + 1) if start >= 0 else None


def _position(text: str, offset: int) -> tuple[int, int]:
    offset = min(max(offset, 0), len(text))
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def data_error(exc: BaseException, sql: str | None = None) -> ByzerError | None:
    """A ByzerError for a failure while rows flowed (a bad cast, an unreadable file), else None."""
    seen = set()
    # Ray Data keeps a UDF's exception only as text in its traceback: find DuckDB's line there.
    text = str(exc)
    match = re.search(r"^_?duckdb\.\w+: ", text, re.M)
    if match:
        rest = text[match.end():]
        message = re.split(r"\n\n(?:LINE \d+:|The above exception)", rest)[0]
        message = " ".join(message.split())
        if len(message) > 200:  # a cast error quotes the whole value
            message = f"{message[:120]} ... {message[-70:]}"
        return SqlError(message, *_caret(rest, sql))
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, duckdb.Error):
            return sql_error(exc, sql)
        if isinstance(exc, (OSError, UnicodeError)):
            first = (str(exc).splitlines() or [""])[0]
            return ByzerError(f"while reading the table: {type(exc).__name__}: {first}")
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


# ---------------------------------------------------------------------------------- repartition
def repartition(ds: "ray.data.Dataset", n: int, cols: list[str] | None = None) -> "ray.data.Dataset":
    """``n`` blocks; with ``cols``, rows with equal values of those columns land in the same block
    (a hash shuffle; a block may be empty when there are fewer distinct keys than blocks)."""
    if n < 1:
        raise ByzerError(f"the number of partitions must be at least 1, not {n}")
    schema = schema_of(ds)
    keys = []
    for col in cols or []:
        names = {name.lower(): name for name in schema.names}
        if col.lower() not in names:
            raise ByzerError(f"unknown column {col}{did_you_mean(col, schema.names)}; "
                             f"columns: {', '.join(schema.names)}")
        keys.append(names[col.lower()])
    if keys:
        from ray.data.context import ShuffleStrategy  # noqa: PLC0415

        if ds.context.shuffle_strategy not in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
            ds.context.shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
        result = ds.repartition(n, keys=keys)
        # An aggregator (an actor: a process) per CPU by default; more than partitions would idle.
        cap = result.context.max_hash_shuffle_aggregators
        result.context.max_hash_shuffle_aggregators = min(n, cap) if cap else n
    else:
        result = ds.repartition(n)
    _SCHEMAS[result] = schema
    return result


# ------------------------------------------------------------------------------------- describe
def describe(ds: "ray.data.Dataset", max_rows: int = 10) -> TableSummary:
    """Row count (only when Ray knows it without running the plan), schema, and the first rows."""
    try:
        head = ds.limit(max_rows).to_pandas() if max_rows > 0 else schema_of(ds).empty_table().to_pandas()
    except Exception as exc:
        error = data_error(exc)
        if error is None:
            raise
        raise error from None
    return TableSummary(cheap_count(ds), schema_of(ds), head)


def cheap_count(ds: "ray.data.Dataset") -> int | None:
    """The row count when Ray knows it from metadata (a materialised table), else None."""
    try:
        return ds._meta_count()  # private API; None for a plan that has not run
    except Exception:  # never let it break a preview
        return None
