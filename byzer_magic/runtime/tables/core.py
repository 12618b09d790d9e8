"""What every table module shares: the schemas we know without running a plan, Ray Data's settings,
and a table's preview."""
from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING, NamedTuple

import pyarrow as pa

from byzer_magic.runtime.tables.errors import data_error

if TYPE_CHECKING:
    import pandas as pd
    import ray.data

TEXT_SCHEMA = pa.schema([("value", pa.string()), ("file", pa.string())])

# Schemas we know without running anything; ``Dataset.schema()`` would execute the plan.
_SCHEMAS: "weakref.WeakKeyDictionary[ray.data.Dataset, pa.Schema]" = weakref.WeakKeyDictionary()


class TableSummary(NamedTuple):
    row_count: int | None  # None when counting would mean running the whole plan
    schema: pa.Schema
    head: "pd.DataFrame"


def remember_schema(ds: "ray.data.Dataset", schema: pa.Schema) -> "ray.data.Dataset":
    _SCHEMAS[ds] = schema
    return ds


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


def schema_of(ds: "ray.data.Dataset") -> pa.Schema:
    """The table's Arrow schema; known for tables made here, else asked of Ray (may run a block)."""
    known = _SCHEMAS.get(ds)
    if known is not None:
        return known
    try:
        schema = ds.schema()
    except Exception as exc:
        error = data_error(exc)
        if error is None:
            raise
        raise error from None
    arrow = pa.schema([]) if schema is None else getattr(schema, "base_schema", schema)
    if not isinstance(arrow, pa.Schema):
        arrow = pa.schema(list(zip(schema.names, schema.types)))
    _SCHEMAS[ds] = arrow
    return arrow


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
