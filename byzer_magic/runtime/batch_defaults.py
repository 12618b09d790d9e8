"""The micro-batch and gradient accumulation a run gets when the user sets neither (docs/PERF_NOTES.md,
"Fast defaults").

A pretraining run should take optimizer steps of a sound size in *tokens*, whatever its sequence
length, worker count or memory. The target, ``TOKENS_PER_STEP = 2**19`` (524,288 tokens):

- LLaMA-1/2 trained with 4M tokens a step, Chinchilla 1.5M -> 3M, TinyLlama-1.1B and Pythia 2M; those are
  runs of 1e22-1e24 FLOPs on thousands of GPUs. GPT-3's smallest models (125M-350M) used 0.5M.
- The best batch grows with compute: DeepSeek-LLM's fit (arXiv 2401.02954) is B = 0.292 * C**0.3271
  tokens, which gives ~0.5M at C = 1e19 and ~0.8M at C = 5e19, a day of one H200 at 55% MFU. The runs a
  notebook launches (hours on one node) sit there: 2**19 is that practice scaled down, still a proper
  pretraining step, and it makes DeepSpeed's per-step cost (optimizer, gradient copies, clipping) a few
  per cent of a micro-step or less (bench/results/h200.json).
- Never more than the data allows: a step takes at most 1/``MIN_STEPS`` of the tokens the run trains on
  (or 1/``steps_per_epoch`` of an epoch's tokens when the user fixed the steps), so small data still
  gets a learning-rate schedule of ``MIN_STEPS`` steps.

The micro-batch is the largest power of two that fits memory (``max_micro``, from the plan's memory
model), holds at most ``MICRO_TOKENS`` = 32,768 tokens and at most one step's tokens. On an H200 a 1.1B
Llama ran 2.3% faster at 16 x 2048 than at 8 x 2048 tokens a micro-step (fewer, larger matmuls and
launches; bench/results/probe.json); beyond that activations grow faster than the gain. Accumulation
then fills the step up to the target.
"""
from __future__ import annotations

from typing import NamedTuple

from byzer_magic.errors import ByzerError

TOKENS_PER_STEP = 2 ** 19      # 524,288 tokens per optimizer step (all workers together)
MIN_STEPS = 100                # a run gets at least this many optimizer steps when its data is small
MICRO_TOKENS = 32768           # tokens per micro-step per GPU beyond which the plan does not grow the micro-batch


class BatchChoice(NamedTuple):
    micro: int   # train_micro_batch_size_per_gpu
    gas: int     # gradient_accumulation_steps
    note: str    # one line for the plan: what was chosen and why


def _positive(name: str, value, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ByzerError(f"{name} must be a positive integer, got {value!r}")
    return value


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def choose_batch(*, max_length: int, workers: int, max_micro: int | None = None, user_micro: int | None = None,
                 user_gas: int | None = None, tokens_target: int | None = TOKENS_PER_STEP,
                 data_tokens: int | None = None, epochs: int = 1, steps_per_epoch: int | None = None,
                 micro_tokens: int = MICRO_TOKENS) -> BatchChoice:
    """(micro-batch, gradient accumulation, note) for a run; what the user set is kept as set.

    ``max_length``: tokens per sequence; ``workers``: data-parallel GPUs (or CPU workers);
    ``max_micro``: the largest micro-batch that fits one GPU (None: not known, not checked);
    ``tokens_target``: tokens per optimizer step wanted (None: no target, accumulation 1);
    ``data_tokens``: the tokens of one epoch (None: not counted); ``steps_per_epoch``: the user's, if set.
    """
    max_length, workers = _positive("max_length", max_length, optional=False), _positive("workers", workers,
                                                                                         optional=False)
    max_micro, user_micro, user_gas = (_positive("max_micro", max_micro), _positive("micro-batch", user_micro),
                                       _positive("gradient_accumulation_steps", user_gas))
    tokens_target, epochs = _positive("tokens_target", tokens_target), _positive("epochs", epochs, optional=False)
    steps_per_epoch = _positive("steps_per_epoch", steps_per_epoch)
    if data_tokens is not None and (not isinstance(data_tokens, int) or data_tokens < 0):
        raise ByzerError(f"data_tokens must be a count of tokens, got {data_tokens!r}")
    if user_micro is not None and user_gas is not None:
        return BatchChoice(user_micro, user_gas, f"micro-batch {user_micro} x accumulation {user_gas}: as set "
                                                 f"({_tokens(user_micro * user_gas * workers * max_length)} a step)")
    why: list[str] = []
    target = tokens_target
    # The most tokens one step may take so that the data still gives the run its steps.
    data_cap = None
    if data_tokens is not None:
        if steps_per_epoch:
            data_cap, reason = data_tokens // steps_per_epoch, f"{steps_per_epoch} steps an epoch"
        else:
            data_cap, reason = data_tokens * epochs // MIN_STEPS, f"at least {MIN_STEPS} steps"
        data_cap = max(data_cap, max_length * workers)  # one sequence per worker a step, however little data
        if target is not None and data_cap < target:
            why.append(f"the data ({_tokens(data_tokens)} tokens) allows {_tokens(data_cap)} a step for {reason}")
            target = data_cap
    per_micro = max_length * workers  # tokens one micro-batch of 1 adds to a step
    if user_micro is not None:
        micro = user_micro
    else:
        limit = max(1, micro_tokens // max_length)
        if max_micro is not None:
            limit = min(limit, max_micro)
        cap = target if target is not None else data_cap
        if cap is not None:
            limit = min(limit, max(1, cap // per_micro))
        micro = _pow2_floor(limit)
    if user_gas is not None:
        gas = user_gas
    elif target is None:
        gas = 1
    else:
        gas = max(1, target // (micro * per_micro))
    step_tokens = micro * gas * per_micro
    set_by = ("micro-batch as set, " if user_micro is not None else "") + \
             ("accumulation as set, " if user_gas is not None else "")
    goal = f"target {_tokens(tokens_target)} tokens a step" if tokens_target else "no token target"
    note = (f"micro-batch {micro} x accumulation {gas} x {workers} worker{'s' if workers > 1 else ''} x "
            f"{max_length} tokens = {_tokens(step_tokens)} tokens an optimizer step ({set_by}{goal}"
            + (f"; {'; '.join(why)}" if why else "") + ")")
    return BatchChoice(micro, gas, note)


def _tokens(n: int) -> str:
    return f"{n:,}"
