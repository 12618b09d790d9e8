"""worker/health.py: a loss that is not finite, or too many skipped optimizer steps, stops the run."""
from __future__ import annotations

import math

import pytest

from byzer_magic.errors import ByzerError, DeterministicFailure
from byzer_magic.runtime.config import TrainArgs
from byzer_magic.runtime.worker import health


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
def test_a_non_finite_loss_fails_naming_the_step(bad):
    guard = health.LossGuard()
    guard.check(1, 2.5)
    guard.check(2, 2.4)
    with pytest.raises(health.NonFiniteLoss, match=r"^loss is not finite at step 3: (nan|inf|-inf) "
                                                   r"\(last finite at step 2\)") as info:
        guard.check(3, bad)
    assert isinstance(info.value, DeterministicFailure) and isinstance(info.value, ByzerError)
    assert guard.last_good_step == 2 and not guard.healthy_at(3) and guard.healthy_at(2)


def test_skipped_steps_up_to_the_limit_are_allowed():
    guard = health.LossGuard(max_skipped_steps=3)
    for step, skipped in [(1, 1), (2, 2), (3, 3), (4, 3)]:
        guard.check(step, 2.0, skipped)
    with pytest.raises(health.TooManySkippedSteps, match="DeepSpeed skipped 4 optimizer steps by step 5 .* "
                                                         "max_skipped_steps=3"):
        guard.check(5, 2.0, 4)
    assert guard.last_good_step == 4


def test_zero_allows_no_skip_and_bad_limits_are_refused():
    guard = health.LossGuard(max_skipped_steps=0)
    guard.check(1, 1.0, 0)
    with pytest.raises(health.TooManySkippedSteps):
        guard.check(2, 1.0, 1)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            health.LossGuard(bad)


def test_the_limit_is_a_training_argument():
    assert TrainArgs().max_skipped_steps == 50
    assert TrainArgs(max_skipped_steps=0).max_skipped_steps == 0
    with pytest.raises(ByzerError, match="max_skipped_steps must be between 0 and"):
        TrainArgs(max_skipped_steps=-1)


def test_skipped_steps_read_from_a_deepspeed_engine():
    class Engine:
        skipped_steps = 7

    assert health.skipped_steps_of(Engine()) == 7 and health.skipped_steps_of(object()) == 0


def test_the_failure_is_recorded_for_the_driver(tmp_path):
    err = health.NonFiniteLoss("loss is not finite at step 9: nan")
    health.record_failure(tmp_path, "job-r1", err, rank=1)  # only rank 0 writes
    assert health.recorded_failure(tmp_path, "job-r1") is None
    health.record_failure(tmp_path, "job-r1", err)
    found = health.recorded_failure(tmp_path, "job-r1")
    assert isinstance(found, DeterministicFailure) and str(found) == "loss is not finite at step 9: nan"
    assert health.recorded_failure(tmp_path, "job-r2") is None  # another attempt's record is not this one's


def test_a_real_deepspeed_fp32_engine_reports_no_skips_and_the_guard_catches_its_nan(gloo_group):
    """The session's one-process gloo group, DeepSpeed's engine on the CPU: a NaN input makes a NaN loss."""
    import deepspeed
    import torch

    model = torch.nn.Linear(4, 1)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
        "train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})
    guard = health.LossGuard(max_skipped_steps=0)
    for step, x in enumerate([torch.ones(1, 4), torch.full((1, 4), math.nan)], start=1):
        loss = engine(x).sum()
        engine.backward(loss)
        engine.step()
        if step == 1:
            guard.check(step, loss.item(), health.skipped_steps_of(engine))
        else:
            with pytest.raises(health.NonFiniteLoss, match="at step 2"):
                guard.check(step, loss.item(), health.skipped_steps_of(engine))
    assert health.skipped_steps_of(engine) == 0
