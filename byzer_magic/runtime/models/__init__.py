"""Model classes and how to build or load them.

Importing this package registers ``baichuan`` with transformers' Auto classes, so a Baichuan folder saved
by ``save_pretrained`` opens with ``AutoModelForCausalLM.from_pretrained`` (no ``trust_remote_code``).
"""
from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from .baichuan import BaiChuanConfig, BaiChuanForCausalLM, BaiChuanModel


def _register() -> None:
    # Idempotent: a Ray worker may import this package more than once per process (reloads, tests).
    try:
        AutoConfig.register(BaiChuanConfig.model_type, BaiChuanConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(BaiChuanConfig, BaiChuanForCausalLM)
    except ValueError:
        pass


_register()

from .registry import MODEL_TYPES, build_model, build_training_model, load_model, model_config_keys  # noqa: E402

__all__ = ["BaiChuanConfig", "BaiChuanForCausalLM", "BaiChuanModel", "MODEL_TYPES", "build_model", "build_training_model",
           "load_model", "model_config_keys"]
