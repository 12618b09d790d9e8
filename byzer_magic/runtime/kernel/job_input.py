"""The job's input table, left in the job folder for the driver (``driver/inputs.py`` reads it back).

A table whose plan can leave the notebook (``Dataset.has_serializable_lineage``: tables loaded from
files and shaped by select and TableRepartition) is saved as its plan, in milliseconds: the driver
reads the rows on the cluster, so a detached cell returns at once whatever the input's size. Any other
table (built from Python objects in the notebook) is written out by Ray tasks first (its rows never
pass through the kernel), one file per partition with keepPartitionNum.
"""
from __future__ import annotations

import os
from pathlib import Path

from byzer_magic.runtime.driver.inputs import LINEAGE_FILE
from byzer_magic.runtime.jobfiles import JobFiles


def save_input(ds, files: JobFiles, text_column: str, keep_partitions: bool) -> str:
    """Leave ``ds`` for the driver; returns how ("plan" or "snapshot")."""
    ds = ds.select_columns([text_column])
    if ds.has_serializable_lineage():
        path = files.root / LINEAGE_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ds.serialize_lineage())
        return "plan"
    _snapshot(ds, files.input_dir, keep_partitions)
    return "snapshot"


def partition_count(ds) -> int | None:
    """How many partitions ``ds`` has when its plan ends in a repartition (TableRepartition); None when
    the plan does not say without running (then the driver checks, before any worker starts). Ray Data
    has no public accessor for this: the logical plan's last operator is read, defensively."""
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)
    count = getattr(op, "num_outputs", getattr(op, "_num_outputs", None))
    return count if type(op).__name__ == "Repartition" and isinstance(count, int) else None


def _snapshot(ds, out_dir: Path, keep_partitions: bool) -> None:
    import ray  # noqa: PLC0415

    if not keep_partitions:
        ds.write_parquet(str(out_dir))
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write = ray.remote(num_cpus=0.25)(_write_partition)
    pending, index = [], 0
    for bundle in ds.iter_internal_ref_bundles():
        for block_ref in bundle.block_refs:
            pending.append(write.remote(block_ref, str(out_dir / f"part-{index:05d}.parquet")))
            index += 1
    ray.get(pending)


def _write_partition(block, path: str) -> None:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    pq.write_table(block if isinstance(block, pa.Table) else pa.Table.from_pandas(block), path)
