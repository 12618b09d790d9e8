"""``run T as TableRepartition``: N partitions, rows with equal key columns together."""
from __future__ import annotations

from typing import TYPE_CHECKING

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime.tables.core import remember_schema, schema_of

if TYPE_CHECKING:
    import ray.data


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
    return remember_schema(result, schema)
