"""Held-out evaluation on every worker: the mean next-token loss over the held-out sequences
(``WorkerData.eval_batches``), summed over all workers, and its perplexity."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from byzer_magic.runtime.worker import speed


def evaluate(engine, batches: list[tuple[np.ndarray, float]], device: torch.device) -> tuple[float, float] | None:
    """(loss, perplexity) of the held-out sequences, the same on every rank; None when there are none."""
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    engine.eval()
    with torch.no_grad():
        for ids, weight in batches:
            predicted = ids.shape[0] * (ids.shape[1] - 1)  # tokens with a next token to predict
            loss = speed.causal_lm_loss(engine, torch.from_numpy(ids).to(device))
            totals += torch.tensor([loss.double().item() * predicted * weight, predicted * weight],
                                   dtype=torch.float64, device=device)
    engine.train()
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    if totals[1].item() == 0:
        return None
    loss = totals[0].item() / totals[1].item()
    return loss, math.exp(min(loss, 700.0))
