"""Fused RMSNorm, SwiGLU and RoPE for LLaMA-family models whose decoder layers are not compiled whole.

Under ZeRO-3 a layer cannot be compiled as one graph (DeepSpeed gathers each sub-module's weights in
its forward hooks), but the memory-bound pieces between the matmuls can: each becomes one small compiled
function (``torch.compile``: a fused Triton kernel forward and backward), called from the sub-module's
own forward, after DeepSpeed's hooks have gathered its weight. Parameters, their names and checkpoints
do not change. Measurements: docs/PERF_NOTES.md.
"""
from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F

_COMPILED: dict = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def rms_norm(x, weight, eps: float):
    """transformers' LlamaRMSNorm: fp32 statistics, the weight applied in the input's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def silu_mul(gate, up):
    return F.silu(gate) * up


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _norm_forward(self, hidden_states):
    return _compiled(rms_norm)(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    return self.down_proj(_compiled(silu_mul)(self.gate_proj(x), self.up_proj(x)))


def _rope(q, k, cos, sin, unsqueeze_dim=1, **_):
    return _compiled(rope)(q, k, cos, sin, unsqueeze_dim)


def _is_silu(act) -> bool:
    # torch's nn.SiLU, or transformers' SiLUActivation (nn.SiLU before transformers 5)
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def fuse_pieces(model) -> list[str]:
    """Swap in the fused pieces where the model's modules are the LLaMA ones (by behaviour, not name:
    an RMSNorm with ``variance_epsilon``, a SwiGLU MLP with a SiLU ``act_fn``); returns what changed."""
    done = set()
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and hasattr(module, "weight") \
                and getattr(module, "weight", None) is not None and module.weight.dim() == 1:
            module.forward = types.MethodType(_norm_forward, module)
            done.add("RMSNorm")
        elif name.endswith("MLP") and all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj")) \
                and _is_silu(getattr(module, "act_fn", None)):
            module.forward = types.MethodType(_mlp_forward, module)
            done.add("SwiGLU")
    modeling = sys.modules.get(type(model).__module__)
    if modeling is not None and callable(getattr(modeling, "apply_rotary_pos_emb", None)) \
            and getattr(modeling, "rotate_half", None) is not None:
        modeling.apply_rotary_pos_emb = _rope
        done.add("RoPE")
    return sorted(done)
