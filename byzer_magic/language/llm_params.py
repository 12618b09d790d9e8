"""The parameters of ``run command as LLM.`` where ...`` (docs/LANGUAGE.md), validated and mapped onto the
runtime's ``ParallelConfig``/``TrainArgs``, in the kernel, before anything connects to Ray.

Every option is checked against the list below (an unknown or misspelt one is an error with a "did you
mean"; Byzer ignored it); ``sfft.<type>.<key>`` keys are checked against ``TrainArgs``, the declared type
and each field's range (runtime/spec.py). A parameter given twice, in any case (``name`` and ``Name``), is
an error, as are ``localModelDir`` with ``sfft.str.model_path`` and ``localDataDir`` with
``sfft.str.data_dir`` (the same settings under two names: give one). Numbers are ASCII digits, finite and
bounded; names and paths may not hold invisible or bidirectional-control characters. ``deepspeedConfig``
is checked key by key (runtime/ds_validate.py) and ``modelConfig`` against the model type. Errors carry the
option's position so the cell's line and column are named.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from byzer_magic.errors import ByzerError, check_count, check_visible, did_you_mean, unsafe_characters
from byzer_magic.language.statements import Option
from byzer_magic.runtime.config import ParallelConfig, TrainArgs, check_user_ds_config, load_json

PARAMETERS: dict[str, str] = {
    "name": "the job's name (default sfft-<user>-<yyyyMMdd-HHmmss>)",
    "localPathPrefix": "folder under which the job keeps its files (default ~/byzer_magic/jobs)",
    "pretrainedModelType": "sfft/llama2, sfft/baichuan, or a transformers model type (required)",
    "localModelDir": "the Hugging Face model folder to continue from (none: from scratch)",
    "localDataDir": "a folder (or glob) of text files to read instead of inputTable",
    "inputTable": "the table to train on; it must have a `text` column",
    "outputTable": "a table that receives the run's result row",
    "detached": '"true" (default): return at once, the job outlives the notebook',
    "keepPartitionNum": '"true": one input partition per worker, as partitioned',
    "deepspeedConfig": "a DeepSpeed JSON config, merged over the defaults",
    "modelConfig": "from scratch: the architecture's sizes as JSON (hidden_size, num_hidden_layers, ...)",
    "model": '"command" (kept for compatibility)',
    "resume": '"true": continue the job called `name` from its latest checkpoint',
    "dryRun": '"true": plan the run (tokens, steps, memory) without training',
}
# Training settings outside TrainArgs that the sfft.<type>.<key> form may also set.
_EXTRA_SFFT = {"setup_nccl_socket_ifname_by_ip": bool, "gradient_checkpointing": bool}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
# sfft names of settings that also have a parameter: one setting, two spellings; give one.
_SAME_AS = {"model_path": "localModelDir", "data_dir": "localDataDir"}
_VISIBLE = {"name", "localPathPrefix", "localModelDir", "localDataDir", "inputTable", "outputTable",
            "pretrainedModelType"}
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
MAX_DIGITS = 30          # an integer option longer than this is refused before it is converted
MAX_WORKERS = 100_000    # num_gpus
MAX_CPUS_PER_WORKER = 4096


@dataclass
class LLMRun:
    """A validated ``run ... as LLM`` statement."""
    config: ParallelConfig
    detached: bool
    resume: bool
    dry_run: bool
    extra: dict[str, Any]


def _fail(option: Option, message: str) -> ByzerError:
    return ByzerError(message, line=option.span.line, column=option.span.column,
                      source_line=option.span.source_line)


def _shown(text: str) -> str:
    """``text`` quoted for a message; escaped (``ascii``) when it holds characters a reader cannot see."""
    return ascii(text) if unsafe_characters(text) else f'"{text}"'


def _convert(option: Option, kind: type, label: str) -> Any:
    text = option.value.strip()
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _fail(option, f'{label} must be "true" or "false", got {_shown(option.value)}')
    if kind is int:
        if not _INT.fullmatch(text):
            raise _fail(option, f"{label} must be an integer, got {_shown(option.value)}")
        if len(text.lstrip("+-")) > MAX_DIGITS:
            raise _fail(option, f"{label} is too large ({len(text)} digits)")
        return int(text)
    if kind is float:
        if not _FLOAT.fullmatch(text) or not math.isfinite(value := float(text)):
            raise _fail(option, f"{label} must be a finite number, got {_shown(option.value)}")
        return value
    return option.value


def _sfft(option: Option, train: dict, extra: dict) -> str:
    """Convert and check one ``sfft.<type>.<key>`` option into ``train``/``extra``; returns ``key``."""
    from byzer_magic.runtime.spec import check_value, sfft_fields  # noqa: PLC0415

    parts = option.key.split(".", 2)
    if len(parts) != 3 or parts[1] not in _TYPES:
        raise _fail(option, f"`{option.key}`: use sfft.<int|float|bool|str>.<key>, e.g. `sfft.int.max_length`")
    kind, key = _TYPES[parts[1]], parts[2]
    known = {**TrainArgs.field_types(), **_EXTRA_SFFT}
    if key not in known:
        raise _fail(option, f"unknown training argument `{option.key}`{did_you_mean(key, known)}; "
                            f"valid keys: {', '.join(sorted(known))}")
    expected = known[key]
    if kind is not expected and not (kind is int and expected is float):
        kinds = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}
        raise _fail(option, f"`{option.key}`: {key} is {kinds[expected]}; write "
                            f"`sfft.{expected.__name__}.{key}`")
    value = _convert(option, expected, f"`{option.key}`")
    if expected is str:
        _visible(option, value, f"`{option.key}`")
    fields = sfft_fields()
    if key in fields:
        try:
            value = check_value(fields[key][1], value)
        except ByzerError as err:
            raise _fail(option, f"`{option.key}`: {err.message}") from None
    (extra if key in _EXTRA_SFFT else train)[key] = value
    return key


def _visible(option: Option, value: str, label: str) -> None:
    try:
        check_visible(value, what=label)
    except ByzerError as err:
        raise _fail(option, err.message) from None


def _collect(options: tuple[Option, ...], interpolate) -> tuple[dict[str, Option], list[Option]]:
    """Plain parameters by canonical name and the sfft options; duplicates in any case are errors."""
    values: dict[str, Option] = {}
    sfft: list[Option] = []
    seen: dict[str, Option] = {}
    lowered = {k.lower(): k for k in PARAMETERS}
    for option in options:
        if interpolate:
            option = Option(option.key, interpolate(option.value, option), option.span)
        if unsafe_characters(option.key):
            raise _fail(option, f"parameter name {ascii(option.key)} holds an invisible or text-reordering "
                                f"character; retype it")
        if option.key.lower().startswith("sfft."):
            parts = option.key.split(".", 2)
            canonical = f"sfft.*.{parts[-1]}" if len(parts) == 3 else option.key.lower()
            sfft.append(option)
        elif option.key.lower() in lowered:  # Byzer's parameters are case-sensitive; we forgive the case
            canonical = lowered[option.key.lower()]
            values[canonical] = option
        else:
            raise _fail(option, f"unknown parameter `{option.key}`{did_you_mean(option.key, PARAMETERS)}; valid: "
                                f"{', '.join(PARAMETERS)}, and sfft.<int|float|bool|str>.<key>")
        if canonical in seen:
            first = seen[canonical]
            raise _fail(option, f"`{option.key}` is given twice (also `{first.key}` at line {first.span.line}, "
                                f"column {first.span.column}): give it once")
        seen[canonical] = option
    return values, sfft


def _model_config(option: Option, text: str, model_type: str | None) -> dict:
    """``modelConfig``: a JSON object whose keys the model type takes, each value of its default's type."""
    try:
        config = load_json(text, "modelConfig")
    except ByzerError as err:
        raise _fail(option, err.message) from None
    if not isinstance(config, dict):
        raise _fail(option, "modelConfig must be a JSON object")
    if model_type is None:
        return config
    from byzer_magic.runtime.models import registry  # noqa: PLC0415

    valid = registry.model_config_keys(model_type)
    family = registry._resolve(model_type)
    defaults = family.config_class(**family.defaults)
    for key, value in config.items():
        if key not in valid:
            raise _fail(option, f"modelConfig: unknown key {key!r} for {model_type}{did_you_mean(key, valid)}; "
                                f"valid: {', '.join(valid)}")
        default = getattr(defaults, key, None)
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31
            want = "a whole number from 0 to 2,147,483,647"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        else:
            continue
        if not ok:
            raise _fail(option, f"modelConfig: {key} must be {want}, got {value!r}")
    return config


def parse_llm_options(options: tuple[Option, ...], *, setup: dict, tables: dict,
                      interpolate: Callable[[str, Option], str] | None = None) -> LLMRun:
    """Validate the options of ``run command as LLM`` and build the run's config (connects to nothing)."""
    values, sfft_options = _collect(options, interpolate)
    train: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    sfft_at: dict[str, Option] = {}
    for option in sfft_options:
        sfft_at[_sfft(option, train, extra)] = option
    get = lambda key: values[key].value if key in values else None  # noqa: E731
    flag = lambda key, default: _convert(values[key], bool, key) if key in values else default  # noqa: E731
    for key in _VISIBLE & set(values):
        _visible(values[key], values[key].value, key)
    for key, parameter in _SAME_AS.items():
        if key in sfft_at and parameter in values:
            raise _fail(sfft_at[key], f"`{sfft_at[key].key}` is {parameter} under another name; give one of them")
        if parameter in values:
            train[key] = get(parameter)

    resume, dry_run, detached = flag("resume", False), flag("dryRun", False), flag("detached", True)
    keep_partitions = flag("keepPartitionNum", False)
    if "pretrainedModelType" not in values and not resume:
        raise ByzerError('pretrainedModelType is required (e.g. pretrainedModelType="sfft/llama2")')
    if resume and "name" not in values:
        raise ByzerError('resume="true" needs the name of the job to resume (name="...")')
    model_type = get("pretrainedModelType")
    if model_type is not None:
        from byzer_magic.runtime.models import registry  # noqa: PLC0415

        try:
            registry.model_config_keys(model_type)  # an unknown type fails here
        except ByzerError as err:
            raise _fail(values["pretrainedModelType"], err.message) from None
    if "model" in values and get("model") != "command":
        raise _fail(values["model"], f'model must be "command", got {_shown(get("model"))}')
    if "name" in values:
        from byzer_magic.runtime.kernel.submit import job_dir_for  # noqa: PLC0415

        try:
            job_dir_for(get("name"), get("localPathPrefix"))
        except ByzerError as err:
            raise _fail(values["name"], err.message) from None
    num_workers = setup.get("num_gpus", 1)
    cpus = float(setup.get("num_cpus_per_worker", 1))
    try:
        check_count("num_gpus (the number of workers)", num_workers, high=MAX_WORKERS)
        if not 0 < cpus <= MAX_CPUS_PER_WORKER:
            raise ByzerError(f"num_cpus_per_worker must be a number from 0 to {MAX_CPUS_PER_WORKER}, got {cpus:g}")
    except ByzerError as err:
        raise err.located(statement="run command as LLM") from None
    ds_config = None
    if "deepspeedConfig" in values:
        try:
            check_user_ds_config(get("deepspeedConfig"), num_workers=num_workers)
            ds_config = load_json(get("deepspeedConfig"), "deepspeedConfig")
        except ByzerError as err:
            raise _fail(values["deepspeedConfig"], err.message) from None
    model_config = None
    if "modelConfig" in values:
        model_config = _model_config(values["modelConfig"], get("modelConfig"), model_type)
    input_table = None
    if "inputTable" in values:
        name = get("inputTable")
        if name not in tables:
            raise _fail(values["inputTable"], f"unknown table {_shown(name)}{did_you_mean(name, tables)}; tables: "
                                              f"{', '.join(tables) or 'none'}")
        input_table = tables[name]
    try:
        train_args = TrainArgs(**train)
    except ByzerError as err:
        raise err.located(statement="run command as LLM")
    config = ParallelConfig(
        num_workers=num_workers, ds_config=ds_config, train_args=train_args, name=get("name"),
        local_path_prefix=get("localPathPrefix"), model_type=model_type or "sfft/llama2",
        model_config=model_config, keep_partition_num=keep_partitions,
        input_table=input_table, input_table_name=get("inputTable"), output_table=get("outputTable"),
        setup_nccl_socket_ifname_by_ip=extra.pop("setup_nccl_socket_ifname_by_ip", False),
        gradient_checkpointing=extra.pop("gradient_checkpointing", False),
        use_gpu=setup.get("use_gpu"), cpus_per_worker=cpus)
    if not resume:
        from byzer_magic.runtime.kernel.job_spec import check_inputs  # noqa: PLC0415

        try:
            check_inputs(config)
        except ByzerError as err:
            where = values.get("localDataDir") or values.get("inputTable")
            raise (_fail(where, err.message) if where else err.located(statement="run command as LLM")) from None
    return LLMRun(config=config, detached=detached, resume=resume, dry_run=dry_run, extra=extra)

