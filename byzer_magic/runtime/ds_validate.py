"""The user's DeepSpeed config, checked key by key in the kernel before anything connects or starts.

DeepSpeed itself ignores a key it does not know (``zero_optimisation`` would silently train with ZeRO-2)
and reports a wrong type deep inside a worker, minutes later. Here:

- top-level keys are those DeepSpeed's own ``DeepSpeedConfig`` reads (recorded from it, so the list follows
  the installed version) plus the sections the engine reads (optimizer, scheduler, ...); any other is an
  error with a "did you mean";
- sections with a DeepSpeed pydantic model (``zero_optimization``, ``bf16``, ``fp16``, the monitors,
  ``comms_logger``, ``compile``) are validated by that model, and each value's JSON type must match the
  field's (``"enabled": "yes"`` is refused, not read as true);
- ``optimizer`` and ``scheduler``: a known ``type`` and only the parameters its class takes (read from
  the classes' signatures), each of the right type and range (``lr: "fast"``, ``lr: -1`` are errors);
- ``"auto"`` is accepted only where byzer-magic resolves it (``AUTO_PATHS``; runtime/config.py);
- ``train_batch_size`` must equal micro-batch x accumulation x workers.
"""
from __future__ import annotations

import enum
import functools
import inspect
import math
import typing
from typing import Any

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.runtime.deepspeed_import import import_deepspeed

# Where "auto" means something: resolve_ds_config (runtime/config.py) replaces it.
AUTO_PATHS = ("bf16.enabled", "scheduler.params.warmup_num_steps", "scheduler.params.total_num_steps")
# Sections the engine reads that DeepSpeedConfig's constructor does not.
_ENGINE_KEYS = {"optimizer", "scheduler", "activation_checkpointing", "flops_profiler", "aio", "autotuning",
                "sequence_parallel_size", "zenflow", "monitor_config"}
_COUNTS = {"train_micro_batch_size_per_gpu": 1 << 16, "gradient_accumulation_steps": 1 << 20,
           "train_batch_size": 1 << 40, "steps_per_print": 1 << 62}
_BOOLS = {"zero_allow_untested_optimizer", "wall_clock_breakdown", "memory_breakdown", "prescale_gradients",
          "sparse_gradients", "dataloader_drop_last", "zero_force_ds_cpu_optimizer", "disable_allgather"}
_PARAM_RULES: dict[str, tuple[str, float | None, float | None]] = {
    # name: (kind, low, high); kind: "pos" (> 0), "num" (finite number in [low, high]), "bool", "betas"
    "lr": ("pos", None, None), "eps": ("pos", None, None), "weight_decay": ("num", 0.0, None),
    "momentum": ("num", 0.0, 1.0), "dampening": ("num", 0.0, 1.0), "betas": ("betas", None, None),
    "torch_adam": ("bool", None, None), "fused": ("bool", None, None), "amsgrad": ("bool", None, None),
    "adam_w_mode": ("bool", None, None), "bias_correction": ("bool", None, None), "nesterov": ("bool", None, None),
    "warmup_min_ratio": ("num", 0.0, 1.0), "cos_min_ratio": ("num", 0.0, 1.0), "warmup_min_lr": ("num", 0.0, None),
    "warmup_max_lr": ("pos", None, None), "cycle_min_lr": ("num", 0.0, None), "cycle_max_lr": ("pos", None, None),
}


def _fail(path: str, message: str) -> ByzerError:
    return ByzerError(f"deepspeedConfig: {path}: {message}" if path else f"deepspeedConfig: {message}")


@functools.cache
def top_level_keys() -> frozenset[str]:
    """Every top-level key DeepSpeed reads: recorded while its own ``DeepSpeedConfig`` parses a config."""
    import_deepspeed()
    from deepspeed.runtime.config import DeepSpeedConfig  # noqa: PLC0415

    seen: set[str] = set()

    class Recording(dict):
        def get(self, key, *default):
            seen.add(key)
            return super().get(key, *default)

        def __getitem__(self, key):
            seen.add(key)
            return super().__getitem__(key)

        def __contains__(self, key):
            seen.add(key)
            return super().__contains__(key)

    DeepSpeedConfig(Recording(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=1))
    return frozenset(k for k in seen if isinstance(k, str)) | _ENGINE_KEYS


@functools.cache
def _models() -> dict[str, type]:
    import_deepspeed()
    from deepspeed.comm.config import CommsLoggerConfig  # noqa: PLC0415
    from deepspeed.compile.config import CompileConfig  # noqa: PLC0415
    from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig  # noqa: PLC0415
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config  # noqa: PLC0415
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # noqa: PLC0415

    return {"zero_optimization": DeepSpeedZeroConfig, "bf16": DeepSpeedBF16Config, "fp16": DeepSpeedFP16Config,
            "tensorboard": TensorBoardConfig, "wandb": WandbConfig, "csv_monitor": CSVConfig, "comet": CometConfig,
            "comms_logger": CommsLoggerConfig, "compile": CompileConfig}


def _signature(cls, drop=("self", "params", "optimizer", "last_batch_iteration")) -> set[str]:
    return {p for p in inspect.signature(cls).parameters if p not in drop}


@functools.cache
def optimizer_params() -> dict[str, frozenset[str] | None]:
    """The parameters each optimizer type takes (None: not checked by name), lower-cased type names."""
    import torch  # noqa: PLC0415
    import_deepspeed()
    from deepspeed.ops.adam import FusedAdam  # noqa: PLC0415
    from deepspeed.ops.lamb import FusedLamb  # noqa: PLC0415
    from deepspeed.ops.lion import FusedLion  # noqa: PLC0415

    adam = _signature(FusedAdam) | _signature(torch.optim.AdamW) | {"torch_adam", "adam_w_mode", "fused"}
    return {"adam": frozenset(adam), "adamw": frozenset(adam), "sgd": frozenset(_signature(torch.optim.SGD)),
            "lamb": frozenset(_signature(FusedLamb)), "lion": frozenset(_signature(FusedLion)),
            "adagrad": frozenset(_signature(torch.optim.Adagrad)), "onebitadam": None, "adamw8bit": None}


@functools.cache
def scheduler_params() -> dict[str, frozenset[str]]:
    import_deepspeed()
    from deepspeed.runtime import lr_schedules  # noqa: PLC0415

    names = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")
    return {n: frozenset(_signature(getattr(lr_schedules, n))) for n in names}


# -- leaf checks ---------------------------------------------------------------------------------------
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_rule(path: str, value, kind: str, low, high) -> None:
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(path, f"must be true or false, got {value!r}")
        return
    if kind == "betas":
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(b) and 0 <= b < 1 for b in value)):
            raise _fail(path, f"must be two numbers in [0, 1), e.g. [0.9, 0.95], got {value!r}")
        return
    if not _is_number(value) or not math.isfinite(value):
        raise _fail(path, f"must be a finite number, got {value!r}")
    if kind == "pos" and value <= 0:
        raise _fail(path, f"must be a number > 0, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise _fail(path, f"must be {bounds}, got {value!r}")


def _check_count(path: str, value, high: int, *, auto: bool = False) -> None:
    if auto and value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise _fail(path, f"must be a whole number from 1 to {high:,}" + (' or "auto"' if auto else "")
                    + f", got {value!r}")


def _check_autos(value, path: str = "") -> None:
    if value == "auto" and path not in AUTO_PATHS:
        raise _fail(path, f'"auto" is resolved only for {", ".join(AUTO_PATHS)}; give {path} a value')
    if isinstance(value, dict):
        for key, item in value.items():
            _check_autos(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_autos(item, f"{path}[{i}]")


def _expected(annotation) -> str:
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    options = [a for a in (annotation, *typing.get_args(annotation)) if a in words]
    return " or ".join(words[a] for a in dict.fromkeys(options)) or "another type"


def _json_type_matches(annotation, value) -> bool | None:
    """Whether a JSON value has the type a pydantic field declares (None: not a simple type, unchecked)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        results = [_json_type_matches(a, value) for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return type(None) in typing.get_args(annotation)
        return None if None in results else any(results)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return any(type(value) is type(m.value) and value == m.value for m in annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_number(value) and float(value).is_integer()
    if annotation is float:
        return _is_number(value)
    if annotation is str:
        return isinstance(value, str)
    return None


def _check_model(path: str, model, section) -> None:
    """``section`` through DeepSpeed's pydantic ``model``: unknown keys, JSON types, then the model's own
    validation."""
    from pydantic import BaseModel, ValidationError  # noqa: PLC0415

    if not isinstance(section, dict):
        raise _fail(path, f"must be a JSON object ({{...}}), got {section!r}")
    fields = model.model_fields
    names = {f.alias or n: n for n, f in fields.items()} | {n: n for n in fields}
    for key, value in section.items():
        if key not in names:
            raise _fail(f"{path}.{key}", f"unknown key{did_you_mean(key, names)}; valid: {', '.join(sorted(fields))}")
        annotation = fields[names[key]].annotation
        sub = next((a for a in (annotation, *typing.get_args(annotation))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and isinstance(value, dict):
            _check_model(f"{path}.{key}", sub, value)
        elif f"{path}.{key}" in AUTO_PATHS and value == "auto":
            continue
        elif _json_type_matches(annotation, value) is False:
            if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
                raise _fail(f"{path}.{key}", f"must be one of {', '.join(repr(m.value) for m in annotation)}, "
                                             f"got {value!r}")
            raise _fail(f"{path}.{key}", f"must be {_expected(annotation)}, got {value!r}")
    try:
        model(**{k: (False if v == "auto" and f"{path}.{k}" in AUTO_PATHS else v) for k, v in section.items()})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _fail(f"{path}.{where}" if where else path, first["msg"]) from None
    except (TypeError, ValueError, AssertionError) as err:  # DeepSpeed's own validators raise these too
        raise _fail(path, str(err)) from None


def _check_params(path: str, params, valid: frozenset[str] | None, what: str) -> None:
    if not isinstance(params, dict):
        raise _fail(path, f"must be a JSON object of {what}'s parameters, got {params!r}")
    for key, value in params.items():
        if valid is not None and key not in valid:
            raise _fail(f"{path}.{key}", f"{what} takes no such parameter{did_you_mean(key, valid)}; valid: "
                                         f"{', '.join(sorted(valid))}")
        if key.endswith("_num_steps") or key.endswith("_step_size") or key.endswith("_stair_count"):
            _check_count(f"{path}.{key}", value, 1 << 40, auto=key in ("warmup_num_steps", "total_num_steps"))
        elif key in _PARAM_RULES:
            _check_rule(f"{path}.{key}", value, *_PARAM_RULES[key])
        elif key == "warmup_type" and value not in ("log", "linear"):
            raise _fail(f"{path}.{key}", f'must be "log" or "linear", got {value!r}')


def _check_optimizer(cfg: dict, optimizers: tuple[str, ...]) -> None:
    opt = cfg.get("optimizer")
    if opt is None:
        return
    if not isinstance(opt, dict) or not isinstance(opt.get("type"), str):
        raise _fail("optimizer", 'must be {"type": "AdamW", "params": {...}}' + f", got {opt!r}")
    for key in opt:
        if key not in ("type", "params"):
            raise _fail(f"optimizer.{key}", f'unknown key{did_you_mean(key, ("type", "params"))}; valid: type, params')
    kind = opt["type"]
    if kind.lower() not in {o.lower() for o in optimizers}:
        raise _fail("optimizer.type", f"unknown optimizer {kind!r}{did_you_mean(kind, optimizers)}; valid: "
                                      f"{', '.join(optimizers)}")
    _check_params("optimizer.params", opt.get("params", {}), optimizer_params().get(kind.lower()), kind)


def _check_scheduler(cfg: dict, schedulers: tuple[str, ...]) -> None:
    sched = cfg.get("scheduler")
    if sched is None:
        return
    if not isinstance(sched, dict) or not isinstance(sched.get("type"), str):
        raise _fail("scheduler", 'must be {"type": "WarmupCosineLR", "params": {...}}' + f", got {sched!r}")
    for key in sched:
        if key not in ("type", "params"):
            raise _fail(f"scheduler.{key}", f'unknown key{did_you_mean(key, ("type", "params"))}; valid: type, params')
    kind = sched["type"]
    if kind not in schedulers:
        raise _fail("scheduler.type", f"unknown scheduler {kind!r}{did_you_mean(kind, schedulers)}; valid: "
                                      f"{', '.join(schedulers)}")
    _check_params("scheduler.params", sched.get("params", {}), scheduler_params()[kind], kind)


def check_ds_config(cfg: dict, *, optimizers: tuple[str, ...], schedulers: tuple[str, ...],
                    num_workers: int | None = None) -> None:
    """Raise a ``ByzerError`` naming the key path for anything DeepSpeed would refuse or ignore in ``cfg``
    (the user's config merged over ours). ``num_workers``: check ``train_batch_size`` against it."""
    known = top_level_keys()
    for key in cfg:
        if key not in known:
            raise _fail(key, f"unknown DeepSpeed key{did_you_mean(key, known)}")
    _check_autos(cfg)
    for key, high in _COUNTS.items():
        if key in cfg:
            _check_count(key, cfg[key], high)
    for key in _BOOLS & set(cfg):
        _check_rule(key, cfg[key], "bool", None, None)
    if "gradient_clipping" in cfg:
        _check_rule("gradient_clipping", cfg["gradient_clipping"], "num", 0.0, None)
    for key, model in _models().items():
        if key in cfg:
            _check_model(key, model, cfg[key])
    if (cfg.get("bf16") or {}).get("enabled") is True and (cfg.get("fp16") or {}).get("enabled") is True:
        raise _fail("", "bf16 and fp16 cannot both be enabled")
    _check_optimizer(cfg, optimizers)
    _check_scheduler(cfg, schedulers)
    if "train_batch_size" in cfg and num_workers:
        micro, gas = cfg.get("train_micro_batch_size_per_gpu", 1), cfg.get("gradient_accumulation_steps", 1)
        if cfg["train_batch_size"] != micro * gas * num_workers:
            hint = ""
            if cfg["train_batch_size"] % (micro * num_workers) == 0:
                hint = (f"; for {cfg['train_batch_size']} set gradient_accumulation_steps to "
                        f"{cfg['train_batch_size'] // (micro * num_workers)}")
            raise _fail("train_batch_size", f"{cfg['train_batch_size']} disagrees with train_micro_batch_size_per_gpu "
                                            f"{micro} x gradient_accumulation_steps {gas} x {num_workers} worker(s) = "
                                            f"{micro * gas * num_workers}: drop it (it is derived){hint}")
