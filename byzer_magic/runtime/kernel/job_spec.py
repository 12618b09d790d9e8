"""The one place a run's ``JobSpec`` is built: from the Python API's ``ParallelConfig`` (which the
``run ... as LLM`` statement also produces) and what the kernel found out before submitting."""
from __future__ import annotations

import time
from dataclasses import fields, replace
from pathlib import Path

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.config import ParallelConfig, parse_ds_config
from byzer_magic.runtime.kernel.job_input import partition_count
from byzer_magic.runtime.spec import (CheckpointSection, DataSection, DeepSpeedSection, EvalSection, JobSection,
                                      JobSpec, ModelSection, ParallelSection, TrainingSection)


def check_inputs(config: ParallelConfig) -> None:
    """Inputs that cannot go together (``localDataDir`` reads files; the others describe a table)."""
    args = config.train_args
    if args.data_dir and config.input_table is not None:
        raise ByzerError(f"localDataDir and inputTable are two inputs; train on one: drop localDataDir, or drop "
                         f"inputTable {config.input_table_name or ''}".rstrip())
    if args.data_dir and config.keep_partition_num:
        raise ByzerError("keepPartitionNum keeps the partitions of an inputTable; localDataDir has none: load the "
                         "files with `load text`, run them as TableRepartition, and pass that table as inputTable")
    if config.input_table is None and not args.data_dir:
        raise ByzerError("no training data: set inputTable (a table with a `text` column) or localDataDir")
    partitions = partition_count(config.input_table) if config.keep_partition_num else None
    if partitions not in (None, config.num_workers):
        table = config.input_table_name or "<table>"
        raise ByzerError(f"keepPartitionNum: inputTable {table} has {partitions} partitions for {config.num_workers} "
                         f"worker(s); they must be equal: run {table} as TableRepartition.`` where "
                         f'partitionNum="{config.num_workers}" ..., or set "num_gpus={partitions}", or drop '
                         f"keepPartitionNum")


def build_job_spec(config: ParallelConfig, *, name: str, job_dir: Path, use_gpu: bool, tokenizer_path: str,
                   cluster_address: str, notes: list[str], get_model_file: str | None) -> JobSpec:
    args = config.train_args

    def section(cls, **given):
        """A section from the training arguments it declares, plus ``given``."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.metadata.get("sfft")}, **given)

    model_path = str(Path(args.model_path).expanduser().resolve()) if args.model_path else None
    return JobSpec(
        job=JobSection(name=name, job_dir=str(job_dir), submission_id=name,
                       submitted_at=time.strftime("%Y-%m-%d %H:%M:%S"), cluster=cluster_address,
                       output_table=config.output_table, notes=notes),
        model=replace(section(ModelSection, model_type=config.model_type, model_config=config.model_config,
                              get_model_file=get_model_file),
                      model_path=model_path, tokenizer_path=tokenizer_path,
                      gradient_checkpointing=args.gradient_checkpointing or config.gradient_checkpointing),
        data=section(DataSection, input_table=config.input_table_name, keep_partition_num=config.keep_partition_num),
        training=section(TrainingSection),
        parallel=replace(section(ParallelSection, num_workers=config.num_workers, use_gpu=use_gpu,
                                 cpus_per_worker=float(config.cpus_per_worker)),
                         setup_nccl_socket_ifname_by_ip=args.setup_nccl_socket_ifname_by_ip
                         or config.setup_nccl_socket_ifname_by_ip),
        checkpoint=section(CheckpointSection), eval=section(EvalSection),
        deepspeed=DeepSpeedSection(config=parse_ds_config(config.ds_config)))
