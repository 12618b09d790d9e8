"""The job's input as a Ray Dataset, in the driver: what the kernel left in the job folder.

One of: ``localDataDir`` (text files, read here), ``input.lineage`` (the notebook's table as a plan,
``Dataset.serialize_lineage``: the rows are read here, on the cluster, so a detached cell returns at
once whatever the input's size), or ``input/`` (a snapshot the kernel wrote, for a table whose plan
cannot leave the notebook, such as one built from local Python objects).
"""
from __future__ import annotations

from typing import Iterator

from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.spec import JobSpec

LINEAGE_FILE = "input.lineage"
# A localDataDir of at most this many bytes is read and tokenised in the driver itself: starting Ray
# Data's tasks costs more (about 15-20 s on a 2-core machine) than reading a few megabytes.
READ_HERE_BYTES = 32 << 20


def source_dataset(spec: JobSpec, files: JobFiles):
    """A Ray Dataset with the text column, or (a keepPartitionNum snapshot) its partitions' files in order."""
    import ray.data  # noqa: PLC0415

    if spec.data.data_dir:
        from byzer_magic.runtime.tables import load_text  # noqa: PLC0415

        return load_text(spec.data.data_dir, wholetext=True).rename_columns({"value": spec.data.text_column})
    lineage = files.root / LINEAGE_FILE
    if lineage.exists():
        return ray.data.Dataset.deserialize_lineage(lineage.read_bytes()).select_columns([spec.data.text_column])
    if spec.data.keep_partition_num:  # one snapshot file per partition, in order: each is tokenised whole
        return sorted(str(p) for p in files.input_dir.glob("part-*.parquet"))
    return ray.data.read_parquet(str(files.input_dir)).select_columns([spec.data.text_column])


def small_local_input(spec: JobSpec) -> Iterator | None:
    """The localDataDir's rows (``text``, ``file``) as Arrow tables read here, when it is small enough
    (``READ_HERE_BYTES``); else None (``source_dataset`` then reads it with Ray Data)."""
    if not spec.data.data_dir or spec.data.keep_partition_num:
        return None
    from byzer_magic.runtime.tables.paths import resolve  # noqa: PLC0415
    from byzer_magic.runtime.tables.text import read_text_here  # noqa: PLC0415

    files = resolve(spec.data.data_dir)
    if sum(files.sizes) > READ_HERE_BYTES:
        return None
    return (table.rename_columns([spec.data.text_column, "file"]) for table in read_text_here(files, wholetext=True))
