"""Optimizers DeepSpeed can be configured with beyond its own: ``"optimizer": {"type": "AdamW8bit"}``.

``AdamW8bit`` is torchao's AdamW with 8-bit block-wise quantised moments (Dettmers et al. 2022, "8-bit
Optimizers via Block-wise Quantization": LM pretraining matched 32-bit Adam). DeepSpeed's ZeRO keeps the
fp32 master weights as usual; only the two Adam moments shrink from 8 to ~2 bytes a parameter, which is
what lets a 7B model train on one H200 without offload (docs/PERF_NOTES.md, "7B"). DeepSpeed builds
an optimizer it does not know by looking its name up in ``torch.optim``; ``register()`` puts it there.
"""
from __future__ import annotations

import torch

NAME = "AdamW8bit"


def available() -> bool:
    try:
        import torchao.optim  # noqa: F401,PLC0415
    except Exception:  # not installed, or built for another torch
        return False
    return True


def register() -> bool:
    """Make ``torch.optim.AdamW8bit`` DeepSpeed-constructible; False when torchao is missing."""
    if getattr(torch.optim, NAME, None) is not None:
        return True
    if not available():
        return False
    setattr(torch.optim, NAME, _make_class())
    return True


def _make_class():
    from torchao.optim import AdamW8bit as TorchaoAdamW8bit  # noqa: PLC0415

    class AdamW8bit(TorchaoAdamW8bit):
        """torchao's AdamW8bit taking DeepSpeed's keyword arguments; the learning rate DeepSpeed's
        schedulers write as a float is turned back into the tensor torchao's compiled step expects."""

        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **kwargs):
            super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **kwargs)

        def step(self, closure=None):
            for group in self.param_groups:
                if not isinstance(group["lr"], torch.Tensor):
                    group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32)
            return super().step(closure)

    AdamW8bit.__qualname__ = AdamW8bit.__name__ = NAME
    return AdamW8bit
