"""Device-specific speed-ups of the training step, kept apart from the loop (torchtitan's split).

``prepare_model`` runs before DeepSpeed wraps the model; ``causal_lm_loss`` computes a micro-batch's
loss. On the CPU both are the plain path.
"""
from __future__ import annotations


def prepare_model(model, plan: dict):
    """The model to hand to DeepSpeed (e.g. compiled, with fused kernels) for this plan's device."""
    return model


def causal_lm_loss(engine, input_ids):
    """Next-token cross-entropy of ``input_ids`` under ``engine`` (labels are the inputs, shifted)."""
    return engine(input_ids=input_ids, labels=input_ids).loss
