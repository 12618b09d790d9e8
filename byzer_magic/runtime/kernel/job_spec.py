"""The one place a run's ``JobSpec`` is built: from the Python API's ``ParallelConfig`` (which the
``run ... as LLM`` statement also produces) and what the kernel found out before submitting."""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import fields, replace
from pathlib import Path

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.config import ParallelConfig, parse_ds_config
from byzer_magic.runtime.kernel.job_input import partition_count
from byzer_magic.runtime.spec import (CheckpointSection, DataSection, DeepSpeedSection, EvalSection, JobSection,
                                      JobSpec, ModelSection, ParallelSection, TrackingSection, TrainingSection,
                                      check_value, trackers_of)


def tracking_uri(args) -> str | None:
    """``mlflow_tracking_uri``, else (when ``report_to`` lists mlflow) the kernel's ``MLFLOW_TRACKING_URI``,
    read at submit and kept in job.json."""
    if args.mlflow_tracking_uri or "mlflow" not in trackers_of(args.report_to):
        return args.mlflow_tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def check_trackers(args) -> None:
    """``report_to``'s trackers can start: their package is installed, MLflow has a server, W&B online a key.
    (The names were checked with the argument: ``spec.trackers_of``.)"""
    listed = trackers_of(args.report_to)
    for name in ("mlflow", "wandb"):
        if name in listed and importlib.util.find_spec(name) is None:
            raise ByzerError(f"report_to={name} needs the {name} package: pip install 'byzer-magic[{name}]' "
                             f"(in the kernel's and the cluster nodes' environment)")
    if "mlflow" in listed:
        uri = tracking_uri(args)
        if not uri:
            raise ByzerError("report_to=mlflow needs a tracking server: set sfft.str.mlflow_tracking_uri (e.g. "
                             '"http://mlflow-host:5000"), or export MLFLOW_TRACKING_URI before starting Jupyter')
        check_value(next(f for f in fields(TrackingSection) if f.name == "mlflow_tracking_uri"), uri)
    if "wandb" in listed and args.wandb_mode == "online" and not os.environ.get("WANDB_API_KEY") \
            and "api.wandb.ai" not in _read(Path.home() / ".netrc"):
        raise ByzerError('report_to=wandb with sfft.str.wandb_mode="online" needs a W&B API key: export WANDB_API_KEY '
                         "before starting Jupyter (it reaches the job as a secret, never in job.json) or run `wandb "
                         'login`; or keep wandb_mode="offline" (run files in the job folder, `wandb sync` them later)')


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def check_inputs(config: ParallelConfig) -> None:
    """Inputs that cannot go together (``localDataDir`` reads files; the others describe a table), and
    trackers that cannot start (``check_trackers``)."""
    args = config.train_args
    check_trackers(args)
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
        tracking=replace(section(TrackingSection), mlflow_tracking_uri=tracking_uri(args)),
        deepspeed=DeepSpeedSection(config=parse_ds_config(config.ds_config)))
