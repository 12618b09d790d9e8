"""registry.build_training_model: a worker's model is built on its device in its training dtype."""
from __future__ import annotations

import pytest
import torch
from ray import cloudpickle

from byzer_magic.runtime.models import build_model, build_training_model
from tests.support.tiny import tiny_model_config

CONFIG = tiny_model_config("sfft/llama2", 512)


@pytest.mark.parametrize("device,dtype", [("meta", torch.bfloat16), ("cpu", "bf16"), ("cpu", None)])
def test_fresh_model_is_made_where_and_as_asked(device, dtype):
    model = build_training_model("sfft/llama2", model_config=CONFIG, device=device, dtype=dtype)
    want = torch.bfloat16 if dtype else torch.float32
    assert {p.dtype for p in model.parameters()} == {want}
    assert {p.device.type for p in model.parameters()} == {device}
    assert torch.get_default_dtype() == torch.float32  # the default is restored


def test_bf16_build_initialises_like_fp32_then_cast():
    torch.manual_seed(0)
    direct = build_training_model("sfft/llama2", model_config=CONFIG, device="cpu", dtype=torch.bfloat16)
    std = direct.model.layers[0].mlp.up_proj.weight.float().std().item()
    assert 0.015 < std < 0.025  # transformers' initializer_range (0.02) in bf16 as in fp32


def test_get_model_file_is_moved_to_the_device_and_dtype(tmp_path):
    def get_model():
        return build_model("sfft/llama2", CONFIG)

    path = tmp_path / "get_model.pkl"
    path.write_bytes(cloudpickle.dumps(get_model))
    model = build_training_model("sfft/llama2", get_model_file=str(path), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_nothing_asked_keeps_the_plain_build():
    model = build_training_model("sfft/llama2", model_config=CONFIG)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
