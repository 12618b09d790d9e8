"""worker/fused.py: the fused RMSNorm, SwiGLU and RoPE compute transformers' functions (checked eagerly
on the CPU; on a GPU the same functions are compiled)."""
from __future__ import annotations

import torch

from byzer_magic.runtime.models import build_model
from byzer_magic.runtime.worker import fused
from tests.support.tiny import tiny_model_config


def test_fused_llama_gives_the_same_loss_and_gradients(monkeypatch):
    monkeypatch.setattr(fused, "_compiled", lambda fn: fn)  # no compiler on the CPU: the same functions, eager
    import transformers.models.llama.modeling_llama as modeling

    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", modeling.apply_rotary_pos_emb)  # restored after
    torch.manual_seed(0)
    plain = build_model("sfft/llama2", tiny_model_config("sfft/llama2", 512))
    torch.manual_seed(0)
    fast = build_model("sfft/llama2", tiny_model_config("sfft/llama2", 512))
    ids = torch.randint(0, 512, (2, 32))
    ref = plain(input_ids=ids, labels=ids).loss
    ref.backward()
    assert fused.fuse_pieces(fast) == ["RMSNorm", "RoPE", "SwiGLU"]
    out = fast(input_ids=ids, labels=ids).loss
    out.backward()
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name
    assert list(dict(plain.named_parameters())) == list(dict(fast.named_parameters()))  # names unchanged
