"""The job's input as a Ray Dataset, in the driver: what the kernel left in the job folder.

One of: ``localDataDir`` (text files, read here), ``input.lineage`` (the notebook's table as a plan,
``Dataset.serialize_lineage``: the rows are read here, on the cluster, so a detached cell returns at
once whatever the input's size), or ``input/`` (a snapshot the kernel wrote, for a table whose plan
cannot leave the notebook, such as one built from local Python objects).
"""
from __future__ import annotations

from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.spec import JobSpec

LINEAGE_FILE = "input.lineage"


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
