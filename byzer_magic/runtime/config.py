"""The job configuration: training arguments, the parallel setup, and the DeepSpeed config.

Validated once, before anything starts (torchtitan's model): a bad value is a ``ByzerError`` that names
the field, never a failure minutes later inside a worker.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime.spec import check_value, kind_of, sfft_fields

# No micro-batch nor accumulation: a GPU run chooses them from a target of tokens per optimizer step
# (runtime/batch_defaults.py); a CPU run takes 1 x 1. A user's config that sets them keeps them.
DEFAULT_CONFIG = json.dumps({
    "gradient_clipping": 1.0,
    "steps_per_print": 1_000_000,  # we log ourselves; DeepSpeed's own prints would flood the cell
    "zero_allow_untested_optimizer": True,
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8,
                                              "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": "auto", "total_num_steps": "auto",
                                                       "warmup_min_ratio": 0.0, "cos_min_ratio": 0.1}},
    "zero_optimization": {"stage": 2, "contiguous_gradients": True, "overlap_comm": True,
                          "reduce_scatter": True, "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
    "bf16": {"enabled": "auto"},
}, indent=2)

OPTIMIZERS = ("Adam", "AdamW", "SGD", "Lamb", "Lion", "OneBitAdam", "Adagrad", "AdamW8bit")  # AdamW8bit: worker/optim.py
SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")


def _train_args_post_init(self) -> None:
    for name, (_, f) in sfft_fields().items():
        setattr(self, name, check_value(f, getattr(self, name)))


def _field_types(cls) -> dict[str, type]:
    """``{name: int | float | str | bool}`` of every training argument (``sfft.<type>.<name>``)."""
    return {name: kind_of(f) for name, (_, f) in sfft_fields().items()}


def _from_dict(cls, values: dict[str, Any]) -> "TrainArgs":
    valid = sfft_fields()
    for key in values:
        if key not in valid:
            raise ByzerError(f"unknown training argument {key!r}{did_you_mean(key, valid)}; "
                             f"valid: {', '.join(sorted(valid))}")
    return cls(**values)


# The training arguments, flat: the ``sfft.<type>.<key>`` parameters of ``run ... as LLM`` and the
# Python API's keywords. Generated from the ``param`` fields of ``runtime/spec.py``'s sections, so that a
# new argument is one field there.
TrainArgs = make_dataclass(
    "TrainArgs",
    [(name, f.type, field(default=f.default, metadata=f.metadata)) for name, (_, f) in sfft_fields().items()],
    namespace={"__post_init__": _train_args_post_init, "field_types": classmethod(_field_types),
               "from_dict": classmethod(_from_dict),
               "__doc__": "Training arguments (`sfft.<type>.<key>`); see runtime/spec.py for each one.",
               "__module__": __name__})


@dataclass
class ParallelConfig:
    """The Python API's run: the seed's names (``DeepSpeedTrain(ParallelConfig(...))``); the kernel turns it
    into a ``JobSpec`` (``kernel/submit.py``)."""
    num_workers: int = 1
    get_model: Callable[[], Any] | None = None   # from scratch: builds the model (Python API)
    ds_config: dict | str | None = None          # merged over DEFAULT_CONFIG
    train_args: TrainArgs = field(default_factory=TrainArgs)
    setup_nccl_socket_ifname_by_ip: bool = False
    name: str | None = None                      # job name (default sfft-<user>-<time>)
    local_path_prefix: str | None = None         # jobs folder (default ~/byzer_magic/jobs)
    model_type: str = "sfft/llama2"
    model_config: dict | None = None             # from scratch, without get_model
    use_gpu: bool | None = None                  # None: GPUs when the cluster has them
    keep_partition_num: bool = False             # partition i of the input goes to worker i
    input_table: Any = None                      # a ray.data.Dataset with a `text` column
    input_table_name: str | None = None
    output_table: str | None = None
    cpus_per_worker: float = 1
    gradient_checkpointing: bool = False        # trade compute for activation memory

    def __post_init__(self):
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ByzerError(f"num_workers must be a positive integer, got {self.num_workers!r}")
        if isinstance(self.train_args, dict):
            self.train_args = TrainArgs.from_dict(self.train_args)


MAX_JSON_CHARS = 1_000_000  # deepspeedConfig / modelConfig text


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f'key "{key}" is given twice')
        out[key] = value
    return out


def load_json(text: str, what: str) -> Any:
    """Strict JSON: bounded size and nesting, no NaN/Infinity, no key given twice; ``ByzerError`` naming
    ``what`` and the JSON's own line and column otherwise."""
    from byzer_magic.errors import MAX_NESTING, check_nesting  # noqa: PLC0415

    if len(text) > MAX_JSON_CHARS:
        raise ByzerError(f"{what} is {len(text):,} characters long; at most {MAX_JSON_CHARS:,}")
    check_nesting(text, what=what, limit=MAX_NESTING)
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise ByzerError(f"{what} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except (ValueError, RecursionError) as err:
        raise ByzerError(f"{what} is not valid JSON: {err}") from None


def parse_ds_config(value: dict | str | None) -> dict:
    """The user's DeepSpeed config as a dict; a string must be a JSON object."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return copy.deepcopy(value)
    parsed = load_json(value, "deepspeedConfig")
    if not isinstance(parsed, dict):
        raise ByzerError("deepspeedConfig must be a JSON object ({...})")
    return parsed


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("optimizer", "scheduler"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_user_ds_config(user: dict | str | None, *, num_workers: int | None = None) -> dict:
    """The user's config merged over ``DEFAULT_CONFIG``, every key checked (runtime/ds_validate.py);
    ``ByzerError`` naming the key path. Runs in the kernel before anything connects."""
    from byzer_magic.runtime.ds_validate import check_ds_config  # noqa: PLC0415

    cfg = _merge(json.loads(DEFAULT_CONFIG), parse_ds_config(user))
    cfg.setdefault("train_micro_batch_size_per_gpu", 1)  # what a GPU run's driver does not choose
    cfg.setdefault("gradient_accumulation_steps", 1)
    check_ds_config(cfg, optimizers=OPTIMIZERS, schedulers=SCHEDULERS, num_workers=num_workers)
    return cfg


def resolve_ds_config(user: dict | str | None, *, on_gpu: bool, bf16_supported: bool = True,
                      total_steps: int | None = None, warmup_ratio: float = 0.05) -> tuple[dict, list[str]]:
    """Merge the user's DeepSpeed config over ours and fit it to the hardware.

    Returns the config and the notes to show the user: every setting we could not honour, and what
    was used instead (never silently).
    """
    cfg = check_user_ds_config(user)
    notes: list[str] = []
    bf16 = cfg.get("bf16", {}).get("enabled")
    fp16 = cfg.get("fp16", {}).get("enabled") is True
    if not on_gpu:
        if bf16 is True or fp16:
            notes.append(f"{'bf16' if bf16 is True else 'fp16'} is not used on the CPU: training in fp32")
        cfg["bf16"] = {"enabled": False}
        cfg.pop("fp16", None)
        zero = cfg.setdefault("zero_optimization", {})
        for part in ("offload_optimizer", "offload_param"):
            if zero.pop(part, None):
                notes.append(f"zero_optimization.{part} to the CPU is dropped: training already runs on the CPU")
        # DeepSpeed's fused/CPU Adam would JIT-compile C++ ops (~100 s) for no gain on tiny CPU runs.
        if cfg.get("optimizer", {}).get("type", "").lower() in ("adam", "adamw"):
            cfg["optimizer"].setdefault("params", {})["torch_adam"] = True
    elif bf16 == "auto":
        cfg["bf16"] = {"enabled": bool(bf16_supported)}
        if not bf16_supported:
            cfg["fp16"] = {"enabled": True}
    if on_gpu:
        user_cfg = parse_ds_config(user)
        if "timers" not in user_cfg:  # DeepSpeed's throughput timer synchronises the GPU every step
            cfg["timers"] = {"throughput": {"enabled": False}}
        opt, zero = cfg.get("optimizer") or {}, cfg.get("zero_optimization") or {}
        offloaded = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
        if opt.get("type", "").lower() in ("adam", "adamw") and not offloaded:
            params = opt.setdefault("params", {})
            if "torch_adam" not in params:  # torch's fused AdamW: no FusedAdam JIT build per machine
                params.update(torch_adam=True, fused=True)
    sched = cfg.get("scheduler")
    if sched and total_steps:
        params = sched.setdefault("params", {})
        if params.get("total_num_steps") == "auto":
            params["total_num_steps"] = max(total_steps, 1)
        if params.get("warmup_num_steps") == "auto":
            params["warmup_num_steps"] = max(1, int(total_steps * warmup_ratio))
    elif sched:
        params = sched.get("params", {})
        if "auto" in (params.get("total_num_steps"), params.get("warmup_num_steps")):
            # Without a step count the schedule cannot be laid out: hold the lr after a short warmup.
            cfg["scheduler"] = {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}
    cfg.pop("train_batch_size", None)  # derived from micro-batch x accumulation x workers
    return cfg, notes

