"""``select`` over tables: Spark SQL (through ``spark.py``) or DuckDB's, run by DuckDB on Ray.

Nothing here pulls a table into the calling process. A ``select`` that only projects and filters the
rows of one table runs batch by batch (DuckDB on each Arrow block, in Ray tasks); any other query
(joins, grouping, ordering, windows, unions, subqueries) runs once over the referenced tables in a
single Ray task. Every query is first checked by DuckDB against empty tables of the inputs' schemas,
so that a misspelt column or a syntax error is reported at once, with its position in the user's text,
before Ray works.
"""
from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Iterable, Mapping

import duckdb
import pyarrow as pa

from byzer_magic.errors import did_you_mean
from byzer_magic.runtime.tables.core import remember_schema, schema_of
from byzer_magic.runtime.tables.errors import SqlError, data_error, sql_error
from byzer_magic.runtime.tables.spark import Translation, install_macros, translate

if TYPE_CHECKING:
    import ray.data


def run_sql(sql: str, tables: Mapping[str, "ray.data.Dataset"], dialect: str = "duckdb") -> "ray.data.Dataset":
    """The result of a query over ``tables`` (matched case-insensitively), as a Dataset. ``dialect``:
    ``"spark"`` (translated by sqlglot) or ``"duckdb"``; error positions are in ``sql`` either way."""
    translation = translate(sql, dialect)
    try:
        return _run(translation, tables)
    except SqlError as err:
        err.sql_line, err.sql_column = translation.position(err.sql_line, err.sql_column)
        raise


def _run(tr: Translation, tables: Mapping[str, "ray.data.Dataset"]) -> "ray.data.Dataset":
    sql = tr.sql
    tree = parse(sql)
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
    out_schema = _validate(sql, schemas, tr.dialect)

    if len(referenced) == 1 and is_row_wise(tree):
        (name, ds), = referenced.values()
        result = ds.map_batches(_query_batch, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"sql": sql, "table": name, "dialect": tr.dialect})
    else:
        result = _materialised(tr, {name: ds for name, ds in referenced.values()}, schemas)
    return remember_schema(result, out_schema)


def parse(sql: str) -> dict:
    """DuckDB's parse tree of one query (``json_serialize_sql``); a syntax error is a located SqlError."""
    with duckdb.connect() as con:
        tree = json.loads(con.execute("select json_serialize_sql(?)", [sql]).fetchone()[0])
        if tree.get("error"):
            try:  # let DuckDB say it with its position (json_serialize_sql's message has none)
                con.execute(sql).fetchall()
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


@functools.cache
def _aggregate_functions() -> frozenset[str]:
    with duckdb.connect() as con:
        rows = con.execute("select distinct function_name from duckdb_functions() "
                           "where function_type = 'aggregate'").fetchall()
    return frozenset(r[0].lower() for r in rows)


def is_row_wise(tree: dict) -> bool:
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
    """The query's result as Arrow (``to_arrow_table`` in DuckDB 2, ``arrow`` in 1.x)."""
    relation = con.sql(sql)
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def _connection(dialect: str, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"threads": threads} if threads else {})
    install_macros(con, dialect)
    return con


def _validate(sql: str, schemas: Mapping[str, pa.Schema], dialect: str) -> pa.Schema:
    """Run the query on empty inputs: DuckDB binds every name (and we learn the result's schema)."""
    with _connection(dialect) as con:
        for name, schema in schemas.items():
            con.register(name, schema.empty_table())
        try:  # ``execute`` (not ``sql``) keeps the position in DuckDB's binder errors
            con.execute(sql).fetchall()
            return _arrow(con, sql).schema
        except duckdb.Error as exc:
            raise sql_error(exc, sql) from None


def _query_batch(batch: pa.Table, *, sql: str, table: str, dialect: str) -> pa.Table:
    with _connection(dialect, threads=1) as con:
        con.register(table, batch)
        return _arrow(con, sql)


def _materialised(tr: Translation, inputs: Mapping[str, "ray.data.Dataset"], schemas: Mapping[str, pa.Schema]):
    """Run the query once over whole tables, in a Ray task: the rows go to the object store and to
    that task, never through this process."""
    import ray.data  # noqa: PLC0415

    refs = {name: ds.to_arrow_refs() for name, ds in inputs.items()}
    table_ref = _remote_query_tables().remote(tr.sql, refs, dict(schemas), tr.dialect)
    try:
        return ray.data.from_arrow_refs([table_ref])
    except Exception as exc:
        error = data_error(exc, tr.sql)
        if error is None:
            raise
        raise error from None


@functools.cache
def _remote_query_tables():
    import ray  # noqa: PLC0415

    return ray.remote(num_cpus=1)(_query_tables)


def _query_tables(sql: str, refs: Mapping[str, list], schemas: Mapping[str, pa.Schema], dialect: str) -> pa.Table:
    import ray  # noqa: PLC0415

    with _connection(dialect) as con:
        for name, table_refs in refs.items():
            blocks = [b for b in ray.get(list(table_refs)) if b.num_rows]
            table = pa.concat_tables(blocks, promote_options="permissive") if blocks else schemas[name].empty_table()
            con.register(name, table)
        return _arrow(con, sql)


def _position(text: str, offset: int) -> tuple[int, int]:
    offset = min(max(offset, 0), len(text))
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1
