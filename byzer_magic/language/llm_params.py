"""The parameters of ``run command as LLM.`` where ...``: spec section 3, validated and mapped onto the
runtime's ``ParallelConfig``/``TrainArgs``.

Every option is checked against the list below (an unknown or misspelt one is an error with a "did you
mean"; Byzer ignored it); ``sfft.<type>.<key>`` keys are checked against ``TrainArgs`` and the declared
type. Errors carry the option's position so the cell's line and column are named.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from byzer_magic.errors import ByzerError, did_you_mean
from byzer_magic.language.statements import Option
from byzer_magic.runtime.config import ParallelConfig, TrainArgs, parse_ds_config

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


def _convert(option: Option, kind: type, label: str) -> Any:
    text = option.value.strip()
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _fail(option, f'{label} must be "true" or "false", got "{option.value}"')
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise _fail(option, f'{label} must be an integer, got "{option.value}"') from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise _fail(option, f'{label} must be a number, got "{option.value}"') from None
    return option.value


def _sfft(option: Option, train: dict, extra: dict) -> None:
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
    (extra if key in _EXTRA_SFFT else train)[key] = value


def parse_llm_options(options: tuple[Option, ...], *, setup: dict, tables: dict,
                      interpolate: Callable[[str, Option], str] | None = None) -> LLMRun:
    """Validate the options of ``run command as LLM`` and build the run's config."""
    values: dict[str, Option] = {}
    train: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    lowered = {k.lower(): k for k in PARAMETERS}
    for option in options:
        if interpolate:
            option = Option(option.key, interpolate(option.value, option), option.span)
        if option.key.startswith("sfft."):
            _sfft(option, train, extra)
        elif option.key in PARAMETERS:
            values[option.key] = option
        elif option.key.lower() in lowered:  # Byzer's parameters are case-sensitive; be forgiving, but say so
            values[lowered[option.key.lower()]] = option
        else:
            raise _fail(option, f"unknown parameter `{option.key}`{did_you_mean(option.key, PARAMETERS)}; valid: "
                                f"{', '.join(PARAMETERS)}, and sfft.<int|float|bool|str>.<key>")
    get = lambda key: values[key].value if key in values else None  # noqa: E731
    flag = lambda key, default: _convert(values[key], bool, key) if key in values else default  # noqa: E731

    resume = flag("resume", False)
    if "pretrainedModelType" not in values and not resume:
        raise ByzerError('pretrainedModelType is required (e.g. pretrainedModelType="sfft/llama2")')
    if "model" in values and get("model") != "command":
        raise _fail(values["model"], f'model must be "command", got "{get("model")}"')
    ds_config = None
    if "deepspeedConfig" in values:
        try:
            ds_config = parse_ds_config(get("deepspeedConfig"))
        except ByzerError as err:
            raise _fail(values["deepspeedConfig"], err.message) from None
    model_config = None
    if "modelConfig" in values:
        try:
            model_config = json.loads(get("modelConfig"))
        except json.JSONDecodeError as err:
            raise _fail(values["modelConfig"], f"modelConfig is not valid JSON: {err.msg}") from None
        if not isinstance(model_config, dict):
            raise _fail(values["modelConfig"], "modelConfig must be a JSON object")
    input_table = None
    if "inputTable" in values:
        name = get("inputTable")
        if name not in tables:
            raise _fail(values["inputTable"], f"unknown table {name!r}{did_you_mean(name, tables)}; tables: "
                                              f"{', '.join(tables) or 'none'}")
        input_table = tables[name]
    train["model_path"] = get("localModelDir")
    train["data_dir"] = get("localDataDir")
    try:
        train_args = TrainArgs(**train)
    except ByzerError as err:
        raise err.located(statement="run command as LLM")
    num_workers = int(setup.get("num_gpus", 1))
    config = ParallelConfig(
        num_workers=num_workers, ds_config=ds_config, train_args=train_args, name=get("name"),
        local_path_prefix=get("localPathPrefix"), model_type=get("pretrainedModelType") or "sfft/llama2",
        model_config=model_config, keep_partition_num=flag("keepPartitionNum", False),
        input_table=input_table, input_table_name=get("inputTable"), output_table=get("outputTable"),
        setup_nccl_socket_ifname_by_ip=extra.pop("setup_nccl_socket_ifname_by_ip", False),
        gradient_checkpointing=extra.pop("gradient_checkpointing", False),
        use_gpu=setup.get("use_gpu"), cpus_per_worker=float(setup.get("num_cpus_per_worker", 1)))
    return LLMRun(config=config, detached=flag("detached", True), resume=resume,
                  dry_run=flag("dryRun", False), extra=extra)


def valid_parameter_names() -> list[str]:
    """All keys the form and the docs offer (plain parameters and the sfft ones)."""
    sfft = [f"sfft.{t.__name__}.{k}" for k, t in {**TrainArgs.field_types(), **_EXTRA_SFFT}.items()]
    return list(PARAMETERS) + sfft


