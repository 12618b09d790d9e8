"""The job's configuration, typed from the cell to the worker: ``JobSpec``, in sections (torchtitan's
``JobConfig`` is the model), and ``JobLayout``, what the job's driver decided from the data.

The kernel builds a ``JobSpec`` once (``kernel/submit.py``), validated field by field from the metadata
below, and writes it to ``job.json`` with its schema version; the driver (``driver/entry.py``) reads it
back whole, lays out the run (``JobLayout``, ``plan.json``) and hands both to every worker. Code reads
``spec.data.max_length``, never a string key.

A field marked ``param(...)`` is a training argument: ``sfft.<type>.<name>`` in a cell and a keyword of
the Python API's ``TrainArgs`` (generated from these fields in ``runtime/config.py``), documented in
docs/LANGUAGE.md. Adding one is one field here plus the code that uses it.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from byzer_magic.errors import ByzerError, did_you_mean

SCHEMA_VERSION = 2
_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def param(default: Any, help: str, *, low: float | None = None, high: float | None = None,
          choices: tuple[str, ...] | None = None, check: Callable[[Any], None] | None = None) -> Any:
    """A training argument (``sfft.<type>.<name>``): its default, what it means, and its valid range
    (``check``: a function that raises ``ByzerError`` for a value the range cannot describe)."""
    return field(default=default, metadata={"sfft": True, "help": help, "low": low, "high": high,
                                            "choices": choices, "check": check})


def kind_of(f) -> type:
    """The Python type of a field declared ``int``, ``float | None``, ... (annotations are strings here)."""
    text = str(f.type)
    return next((t for name, t in _KINDS.items() if text.startswith(name)), str)


def check_value(f, value: Any) -> Any:
    """``value`` for field ``f``, checked against its type and range; ``ByzerError`` naming the field."""
    kind, meta, name = kind_of(f), f.metadata, f.name
    if value is None:
        if "None" in str(f.type):
            return None
        raise ByzerError(f"{name} must be set")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        raise ByzerError(f"{name} must be {words[kind]}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ByzerError(f"{name} must be a finite number, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low} and {high}" if low is not None and high is not None
                  else f">= {low}" if low is not None else f"<= {high}")
        raise ByzerError(f"{name} must be {bounds}, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ByzerError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    if meta.get("check"):
        meta["check"](value)
    return value


def check_fields(obj) -> None:
    """Check every ``param`` field of a dataclass instance (called by each section's ``__post_init__``)."""
    for f in fields(obj):
        if f.metadata.get("sfft"):
            setattr(obj, f.name, check_value(f, getattr(obj, f.name)))


class _Checked:
    def __post_init__(self):
        check_fields(self)


# -- the sections ---------------------------------------------------------------------------------
@dataclass
class JobSection:
    """Who and where: the job's name, folder and Ray submission."""
    name: str = ""
    job_dir: str = ""
    submission_id: str = ""
    submitted_at: str = ""
    attempt: int = 0                       # 0: first run; k: the k-th resume (submission ``<name>-r<k>``)
    cluster: str = ""                      # the address it was submitted to
    resumed_from: str | None = None        # the checkpoint a resume continues from
    output_table: str | None = None
    notes: list[str] = field(default_factory=list)  # what the kernel told the user at submit


@dataclass
class ModelSection(_Checked):
    """Which model to train and with which tokenizer."""
    model_type: str = "sfft/llama2"
    model_path: str | None = param(None, "a Hugging Face folder to continue from (`localModelDir`)")
    tokenizer_path: str | None = param(None, "SentencePiece tokenizer.model or a Hugging Face tokenizer folder "
                                             "(default: the model folder's)")
    model_config: dict | None = None       # from scratch: the architecture's sizes (`modelConfig`)
    get_model_file: str | None = None      # the Python API's get_model(), pickled into the job folder
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass")


@dataclass
class DataSection(_Checked):
    """What to train on and how it is cut into sequences (docs/ARCHITECTURE.md: how data reaches the
    workers)."""
    data_dir: str | None = param(None, "text files to train on instead of an input table (`localDataDir`)")
    input_table: str | None = None         # the table's name in the notebook (its rows: the job's input/)
    text_column: str = param("text", "the input column to train on")
    max_length: int = param(1024, "tokens per packed training sequence", low=2, high=1 << 20)
    keep_partition_num: bool = False       # `keepPartitionNum`: partition i trains on worker i
    shuffle: bool = param(True, "shuffle the documents every epoch (with `seed`; the same order on resume)")


@dataclass
class TrainingSection(_Checked):
    """How long and how: epochs, steps, logging, seed, the schedule's warmup, restarts."""
    epoches: int = param(1, "passes over the data (Byzer's spelling)", low=1, high=100_000)
    steps_per_epoch: int | None = param(None, "optimizer steps per epoch (default: one pass over the data)",
                                        low=1, high=1 << 40)
    log_every: int = param(1, "write metrics every N steps", low=1, high=1 << 40)
    seed: int = param(42, "random seed (model init, shuffling, the held-out split)", low=0, high=2 ** 32 - 1)
    warmup_ratio: float = param(0.05, "warmup share of the steps for the default schedule", low=0.0, high=1.0)
    max_failures: int = param(3, "restarts from the last checkpoint after a lost worker or node", low=0, high=1000)
    max_skipped_steps: int = param(50, "optimizer steps DeepSpeed may skip over the run (fp16 gradient overflow, "
                                       "the loss scale's first steps included) before the job fails "
                                       "(runtime/worker/health.py)", low=0, high=1 << 40)


@dataclass
class ParallelSection(_Checked):
    """Where it runs: the worker group."""
    num_workers: int = 1
    use_gpu: bool | None = None            # None: GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    setup_nccl_socket_ifname_by_ip: bool = param(False, "each worker sets NCCL_SOCKET_IFNAME to the interface "
                                                        "carrying its node's Ray IP")


@dataclass
class CheckpointSection(_Checked):
    """DeepSpeed checkpoints: where, how often, how many."""
    checkpoint_saving_path: str | None = param(None, "checkpoints go to `<path>/<name>/` "
                                                     "(default: the job folder's checkpoints/)")
    checkpoint_every: int = param(500, "a checkpoint every N steps (and at the end)", low=1, high=1 << 40)
    keep_checkpoints: int = param(3, "step checkpoints kept on disk", low=1, high=10_000)


@dataclass
class EvalSection(_Checked):
    """The held-out evaluation: documents kept out of training, evaluated on every worker."""
    eval_ratio: float = param(0.01, "share of the documents held out for evaluation (0: none)", low=0.0, high=0.5)
    eval_every: int | None = param(None, "evaluate every N steps (default: 10 times a run) and at the end",
                                   low=1, high=1 << 40)
    eval_sequences: int = param(64, "held-out sequences evaluated each time, spread over the workers",
                                low=1, high=1 << 30)


@dataclass
class TrackingSection(_Checked):
    """Where the metrics go besides ``metrics.jsonl`` (always written: the monitor reads it), rank 0
    (``worker/metrics.py``, ``worker/trackers.py``). No secret is kept here: an API key or password
    reaches the job through the kernel's environment (``runtime/job_env.py``)."""
    report_to: str = param("tensorboard", "where metrics go besides metrics.jsonl: a comma-separated list of "
                                          "tensorboard, mlflow, wandb, or none", check=lambda v: trackers_of(v))
    mlflow_tracking_uri: str | None = param(None, "the MLflow tracking server (default: the kernel's "
                                                  "MLFLOW_TRACKING_URI at submit)", check=lambda v: _no_password(v))
    mlflow_experiment: str = param("byzer-magic", "the MLflow experiment; the run is named after the job")
    wandb_project: str = param("byzer-magic", "the W&B project; the run is named after the job")
    wandb_mode: str = param("offline", "W&B online (needs WANDB_API_KEY) or offline (run files in the job "
                                       "folder's wandb/, `wandb sync` them)", choices=("offline", "online"))


TRACKERS = ("tensorboard", "mlflow", "wandb")


def trackers_of(report_to: str) -> tuple[str, ...]:
    """The trackers ``report_to`` lists (``"none"``: none); ``ByzerError`` naming it otherwise."""
    items = [item.strip() for item in report_to.split(",")]
    if items == ["none"]:
        return ()
    out: list[str] = []
    for item in items:
        if item not in TRACKERS:
            what = ("none stands alone" if item == "none" else
                    f"unknown tracker {item!r}{did_you_mean(item, (*TRACKERS, 'none'))}")
            raise ByzerError(f"report_to: {what}; valid: a comma-separated list of {', '.join(TRACKERS)}, "
                             f"or none, got {report_to!r}")
        if item not in out:
            out.append(item)
    return tuple(out)


def _no_password(uri: str) -> None:
    if urlsplit(uri).password is not None:
        raise ByzerError("mlflow_tracking_uri holds a password, which job.json would keep: give the URI without "
                         "it and export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the kernel's "
                         "environment (they reach the job as secrets)")


@dataclass
class DeepSpeedSection:
    """The user's DeepSpeed config (``deepspeedConfig``), merged over ``DEFAULT_CONFIG`` by the driver."""
    config: dict = field(default_factory=dict)
    max_micro_batch: int | None = None     # the largest micro-batch that fits one GPU (the pre-flight plan)


SECTIONS: dict[str, type] = {"job": JobSection, "model": ModelSection, "data": DataSection,
                             "training": TrainingSection, "parallel": ParallelSection,
                             "checkpoint": CheckpointSection, "eval": EvalSection, "tracking": TrackingSection,
                             "deepspeed": DeepSpeedSection}


@dataclass
class JobSpec:
    job: JobSection = field(default_factory=JobSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    version: int = SCHEMA_VERSION

    @property
    def checkpoint_dir(self) -> Path:
        """``checkpoint_saving_path/<name>`` when the user chose a folder, else the job folder's."""
        chosen = self.checkpoint.checkpoint_saving_path
        return Path(chosen).expanduser() / self.job.name if chosen else Path(self.job.job_dir) / "checkpoints"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> "JobSpec":
        """The spec ``to_json`` wrote; a section added since (``tracking``) takes its defaults."""
        version = value.get("version")
        if version != SCHEMA_VERSION:
            raise ByzerError(f"job.json has schema version {version!r}; this byzer-magic reads version "
                             f"{SCHEMA_VERSION}: run the job with the byzer-magic that created it")
        return cls(**{name: section(**value.get(name, {})) for name, section in SECTIONS.items()}, version=version)


def sfft_fields() -> dict[str, Any]:
    """Every training argument, by name: ``{name: (section name, dataclass field)}``."""
    out = {}
    for section_name, section in SECTIONS.items():
        for f in fields(section):
            if f.metadata.get("sfft"):
                out[f.name] = (section_name, f)
    return out


def default_of(f) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


# -- what the driver decided ----------------------------------------------------------------------
@dataclass
class CorpusStats:
    """The tokenised input: all of it, the training split and the held-out split."""
    documents: int = 0
    tokens: int = 0
    train_documents: int = 0
    train_tokens: int = 0
    eval_documents: int = 0
    eval_tokens: int = 0
    partition_tokens: list[int] | None = None  # keepPartitionNum: training tokens of partition i


@dataclass
class JobLayout:
    """The run as the driver laid it out (``plan.json``): every worker trains exactly ``total_steps``
    steps of ``tokens_per_step`` tokens, and the progress bar, the schedule and result.json agree."""
    total_steps: int = 0
    steps_per_epoch: int = 0
    sequences_per_epoch: int = 0           # per worker
    tokens_per_step: int = 0               # all workers: micro_batch x grad_accum x workers x max_length
    use_gpu: bool = False
    micro_batch: int = 1
    grad_accum: int = 1
    ds_config: dict = field(default_factory=dict)  # DeepSpeed's own config, resolved for the hardware
    corpus: CorpusStats = field(default_factory=CorpusStats)
    eval_every: int = 0
    eval_sequences: int = 0                # per evaluation, all workers together
    store_dir: str = ""                    # the token store (runtime/token_store.py)
    model_dir: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> "JobLayout":
        value = dict(value)
        value["corpus"] = CorpusStats(**value.get("corpus", {}))
        return cls(**value)
