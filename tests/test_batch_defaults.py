"""batch_defaults.choose_batch: the micro-batch and accumulation a run gets when the user sets neither."""
from __future__ import annotations

import pytest

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.batch_defaults import MIN_STEPS, TOKENS_PER_STEP, choose_batch


def test_one_h200_at_1b_gets_a_half_million_token_step():
    micro, gas, note = choose_batch(max_length=2048, workers=1, max_micro=64)
    assert (micro, gas) == (16, 16)  # 16 x 2048 = 32,768 tokens a micro-step, 16 of them = 2**19
    assert micro * gas * 2048 == TOKENS_PER_STEP
    assert "524,288 tokens an optimizer step" in note and "target 524,288" in note


def test_memory_bounds_the_micro_batch_and_accumulation_fills_the_step():
    micro, gas, _ = choose_batch(max_length=4096, workers=1, max_micro=3)  # 7B: 3 sequences fit
    assert (micro, gas) == (2, 64)
    micro, gas, _ = choose_batch(max_length=2048, workers=8, max_micro=1)
    assert (micro, gas) == (1, 32)  # 8 workers x 2048 = 16k a micro-step


def test_workers_share_the_target():
    micro, gas, _ = choose_batch(max_length=2048, workers=4, max_micro=64)
    assert micro * gas * 4 * 2048 == TOKENS_PER_STEP and micro == 16


def test_short_sequences_get_larger_micro_batches_up_to_the_micro_step_cap():
    micro, gas, _ = choose_batch(max_length=128, workers=1, max_micro=1024)
    assert micro == 256 and micro * 128 == 32768 and gas == 16


def test_never_more_than_the_data_allows():
    # 10M tokens: a step takes at most 1/MIN_STEPS of them.
    micro, gas, note = choose_batch(max_length=2048, workers=1, max_micro=16, data_tokens=10_000_000)
    assert micro * gas * 2048 <= 10_000_000 // MIN_STEPS
    assert "the data (10,000,000 tokens) allows" in note
    # More epochs over the same data allow a larger step.
    _, gas3, _ = choose_batch(max_length=2048, workers=1, max_micro=16, data_tokens=10_000_000, epochs=3)
    assert gas3 > gas
    # A user's steps_per_epoch: every epoch must supply that many steps.
    micro, gas, _ = choose_batch(max_length=2048, workers=1, max_micro=16, data_tokens=1_000_000,
                                 steps_per_epoch=20)
    assert micro * gas * 2048 <= 1_000_000 // 20


def test_tiny_data_still_gets_one_sequence_a_step():
    micro, gas, _ = choose_batch(max_length=128, workers=2, max_micro=8, data_tokens=3000)
    assert (micro, gas) == (1, 1)


def test_what_the_user_set_is_kept():
    assert choose_batch(max_length=2048, workers=1, user_micro=4, user_gas=3)[:2] == (4, 3)
    micro, gas, note = choose_batch(max_length=2048, workers=1, max_micro=16, user_micro=2)
    assert (micro, gas) == (2, 128) and "micro-batch as set" in note
    micro, gas, note = choose_batch(max_length=2048, workers=1, max_micro=16, user_gas=4)
    assert (micro, gas) == (16, 4) and "accumulation as set" in note


def test_no_target_keeps_accumulation_one():
    micro, gas, note = choose_batch(max_length=512, workers=1, max_micro=4, tokens_target=None)
    assert (micro, gas) == (4, 1) and "no token target" in note


@pytest.mark.parametrize("kw", [{"max_length": 0}, {"workers": -1}, {"user_gas": 0}, {"max_micro": 1.5},
                                {"tokens_target": True}, {"data_tokens": -5}])
def test_bad_values_are_one_clear_error(kw):
    args = {"max_length": 128, "workers": 1, **kw}
    with pytest.raises(ByzerError, match="must be"):
        choose_batch(**args)
