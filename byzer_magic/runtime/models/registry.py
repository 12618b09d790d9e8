"""Model types by name: build a fresh model from a config dict (pretraining from scratch) or load a folder.

``sfft/llama2`` and ``sfft/baichuan`` are Byzer-LLM's names. Any causal LM that transformers knows is also
accepted by its model type, bare or as ``hf/<type>`` (``gpt2``, ``hf/qwen2``, ...).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from byzer_magic.errors import ByzerError, did_you_mean

from .baichuan import BaiChuanConfig, BaiChuanForCausalLM

log = logging.getLogger(__name__)


class ModelFamily(NamedTuple):
    config_class: type[PretrainedConfig]
    model_class: type | None  # None: whatever AutoModelForCausalLM picks for the config
    hf_model_type: str  # the ``model_type`` in such a model's config.json
    defaults: dict[str, Any]  # where the family's defaults differ from the config class's
    about: str


MODEL_TYPES: dict[str, ModelFamily] = {
    "sfft/llama2": ModelFamily(LlamaConfig, LlamaForCausalLM, "llama",
                               # LlamaConfig's defaults are LLaMA-1 7B; LLaMA-2 doubled the context.
                               {"max_position_embeddings": 4096},
                               "LLaMA / LLaMA-2 (defaults: LLaMA-2 7B)"),
    "sfft/baichuan": ModelFamily(BaiChuanConfig, BaiChuanForCausalLM, "baichuan", {},
                                 "Baichuan-7B: LLaMA-like with a fused W_pack QKV projection"),
}

# Keys every causal LM config takes besides its own architecture parameters.
_COMMON_KEYS = {"bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"}
# transformers 5 folds these into ``rope_parameters`` but still accepts them; users know them by these names.
_LEGACY_ROPE_KEYS = {"rope_theta", "rope_scaling"}

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
# from_pretrained's keyword was renamed from torch_dtype to dtype in transformers 4.56.
_DTYPE_KW = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _causal_lm_types() -> list[str]:
    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | {BaiChuanConfig.model_type})


def _resolve(model_type: str) -> ModelFamily:
    """The family for a model type name; ByzerError naming the valid ones when there is none."""
    name = (model_type or "").strip().lower()
    if name in MODEL_TYPES:
        return MODEL_TYPES[name]
    hf_type = name[3:] if name.startswith("hf/") else name
    if hf_type == BaiChuanConfig.model_type:
        return MODEL_TYPES["sfft/baichuan"]
    if hf_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return ModelFamily(CONFIG_MAPPING[hf_type], None, hf_type, {}, f"transformers' {hf_type}")
    if hf_type in CONFIG_MAPPING:
        raise ByzerError(f'"{model_type}" is a transformers model type but not a causal language model; '
                         f"use {', '.join(MODEL_TYPES)} or a causal LM type such as hf/qwen2")
    hint = did_you_mean(name, MODEL_TYPES) or did_you_mean(hf_type, _causal_lm_types())
    raise ByzerError(f'unknown model type "{model_type}"{hint}; valid: {", ".join(MODEL_TYPES)}, '
                     "or a causal LM type that transformers knows (for example hf/qwen2, gpt2)")


def _config_keys(config_class: type[PretrainedConfig]) -> set[str]:
    """The architecture keys a config class takes: its own __init__ parameters, not the base class's."""
    def params(fn) -> set[str]:
        return {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}

    own = params(config_class.__init__) - params(PretrainedConfig.__init__)
    keys = own | set(config_class.attribute_map) | _COMMON_KEYS
    if "rope_parameters" in own:
        keys |= _LEGACY_ROPE_KEYS
    return keys


def model_config_keys(model_type: str) -> list[str]:
    """The keys ``build_model`` accepts in ``model_config`` for this model type, sorted."""
    return sorted(_config_keys(_resolve(model_type).config_class))


def _to_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ByzerError(f'unknown dtype "{dtype}"{did_you_mean(key, _DTYPES)}; valid: {", ".join(_DTYPES)}')
    return _DTYPES[key]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    # Parameters are created in this dtype directly: a 7B model never exists in fp32 on the way to bf16.
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(model_type: str, model_config: dict | None = None, *,
                dtype: torch.dtype | str | None = None) -> transformers.PreTrainedModel:
    """A freshly initialised model of this type; ``model_config`` overrides the family's defaults.

    ``sfft/llama2`` defaults to LLaMA-2 7B and ``sfft/baichuan`` to Baichuan-7B; give the sizes you want,
    for example ``{"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 8}``.
    """
    family = _resolve(model_type)
    model_config = dict(model_config or {})
    valid = _config_keys(family.config_class)
    for key in model_config:
        if key not in valid:
            raise ByzerError(f'unknown modelConfig key "{key}" for {model_type}{did_you_mean(key, valid)}; '
                             f"valid keys: {', '.join(sorted(valid))}")
    try:
        config = family.config_class(**{**family.defaults, **model_config})
    except Exception as err:  # transformers' own validation of values and sizes (its error types vary by version)
        raise ByzerError(f"bad modelConfig for {model_type}: {err.__cause__ or err}") from err
    torch_dtype = _to_dtype(dtype)
    with _default_dtype(torch_dtype):
        if family.model_class is not None:
            return family.model_class(config)
        return AutoModelForCausalLM.from_config(config)


def load_model(model_type: str, model_dir: str, *, dtype: torch.dtype | str | None = None,
               device: "torch.device | str | None" = None) -> transformers.PreTrainedModel:
    """The model in a Hugging Face folder (config.json + weights), for continued pretraining.

    The folder's own config.json decides the class; a Baichuan folder loads into ``BaiChuanForCausalLM``
    without running the folder's remote code. ``dtype=None`` keeps transformers' default; ``device``: the
    weights are read straight onto it (no copy of the model on the host first).
    """
    family = _resolve(model_type)
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ByzerError(f"model folder not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ByzerError(f"{path} has no config.json: not a Hugging Face model folder")
    try:
        folder_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ByzerError(f"{config_file} is not valid JSON: {err}") from err
    if folder_type != family.hf_model_type:
        log.warning("%s holds a %r model, loaded as such (asked for %s)", path, folder_type, model_type)
    kwargs = {_DTYPE_KW: _to_dtype(dtype)} if dtype is not None else {}
    if device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = str(torch.device(device))  # safetensors are read onto the device directly
    model_class = BaiChuanForCausalLM if folder_type == BaiChuanConfig.model_type else AutoModelForCausalLM
    try:
        return model_class.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ByzerError(f"cannot load the model in {path}: {err}") from err


def use_expandable_segments() -> None:
    """Let PyTorch's CUDA allocator grow segments in place (``expandable_segments``) unless the user's
    ``PYTORCH_CUDA_ALLOC_CONF`` says otherwise: near a full card it otherwise kept up to 9 GiB reserved but
    unused on an H200 (docs/PLAN.md, section 6), which the plan's memory estimate cannot foresee."""
    if "expandable_segments" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        return
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError) as err:  # an allocator without the setting: keep its default
        log.warning("expandable CUDA segments not set: %s", err)


def build_training_model(model_type: str, *, model_path: str | None = None, model_config: dict | None = None,
                         get_model_file: str | None = None, device: "torch.device | str | None" = None,
                         dtype: torch.dtype | str | None = None) -> torch.nn.Module:
    """The model a training worker starts from: the user's ``get_model()`` (pickled by the kernel), the
    folder it continues from, or a fresh one of ``model_type``. ``device``/``dtype``: where and in which
    dtype the worker will train it (the one place that decides how a worker builds its model).

    A fresh model is created on ``device`` in ``dtype`` directly: a 7B model is initialised on the GPU
    in bf16 in about a second, where fp32 on the host took ~100 s and 27 GB (issue 13). Weights from a
    folder are read onto the device; a ``get_model()`` runs under the same device and dtype defaults
    and is moved there afterwards if it placed its tensors elsewhere."""
    torch_dtype = _to_dtype(dtype)
    where = contextlib.nullcontext() if device is None else torch.device(device)
    if device is not None and torch.device(device).type == "cuda":
        use_expandable_segments()
    if get_model_file:
        from ray import cloudpickle  # noqa: PLC0415

        with open(get_model_file, "rb") as f:
            get_model = cloudpickle.load(f)
        with where, _default_dtype(torch_dtype):
            model = get_model()
    elif model_path:
        return load_model(model_type, model_path, dtype=torch_dtype, device=device)
    else:
        with where:
            model = build_model(model_type, model_config, dtype=torch_dtype)
    if isinstance(model, torch.nn.Module) and (device is not None or torch_dtype is not None):
        model = model.to(device=device, dtype=torch_dtype)
    return model
