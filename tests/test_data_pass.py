"""The data pass, on the real functions the job uses (no Ray): the driver's layout (``driver/layout.py``)
and what each worker then trains (``worker/data.py`` over a real token store).

Invariants, for any documents, workers, micro-batch and accumulation (hypothesis):
(a) the steps the layout announces are the steps every worker trains, exactly;
(b) an epoch trains every training token but less than one global batch, each at most once;
and the held-out documents are never trained, and resuming at any step trains exactly the rest.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import shards
from byzer_magic.runtime.driver.layout import lay_out
from byzer_magic.runtime.spec import DataSection, DeepSpeedSection, EvalSection, JobSpec, ParallelSection, TrainingSection
from byzer_magic.runtime.token_store import TokenStore, write_store
from byzer_magic.runtime.worker.data import WorkerData


def make_store(root, lengths, parts=None) -> TokenStore:
    """A store whose token ids say where they come from: document d holds ids d*1000 + position."""
    ids = [np.arange(n, dtype=np.int64) % 1000 + 1000 * (d % 60) for d, n in enumerate(lengths)]
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    write_store(root, [(flat, np.asarray(lengths), None if parts is None else np.asarray(parts))],
                vocab_size=1 << 17, partitions=0 if parts is None else max(parts) + 1)
    return TokenStore.open(root)


def spec_for(*, workers, micro, gas, max_length, eval_ratio=0.0, epochs=1, keep=False, shuffle=True,
             steps=None) -> JobSpec:
    return JobSpec(data=DataSection(max_length=max_length, keep_partition_num=keep, shuffle=shuffle),
                   training=TrainingSection(epoches=epochs, seed=7, steps_per_epoch=steps),
                   parallel=ParallelSection(num_workers=workers), eval=EvalSection(eval_ratio=eval_ratio),
                   deepspeed=DeepSpeedSection(config={"train_micro_batch_size_per_gpu": micro,
                                                      "gradient_accumulation_steps": gas}))


def trained(spec, layout, store_dir, start: int = 0) -> dict[int, list[np.ndarray]]:
    """Every sequence each worker trains from ``start`` to the end: {rank: [sequence, ...]}."""
    out = {}
    for rank in range(spec.parallel.num_workers):
        data = WorkerData(spec, layout, rank)
        out[rank] = [seq for step in range(start, layout.total_steps) for micro in data.step(step) for seq in micro]
    return out


layouts = st.fixed_dictionaries({
    "lengths": st.lists(st.integers(1, 400), min_size=2, max_size=40),
    "workers": st.integers(1, 5), "micro": st.integers(1, 3), "gas": st.integers(1, 3),
    "max_length": st.integers(2, 64), "eval_ratio": st.sampled_from([0.0, 0.1, 0.3]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layouts)
def test_every_worker_trains_the_planned_steps_and_the_whole_epoch(tmp_path_factory, case):
    store_dir = tmp_path_factory.mktemp("store") / "tokens"
    store = make_store(store_dir, case["lengths"])
    spec = spec_for(workers=case["workers"], micro=case["micro"], gas=case["gas"], max_length=case["max_length"],
                    eval_ratio=case["eval_ratio"])
    shape = shards.BatchShape(case["max_length"], case["workers"], case["micro"], case["gas"])
    train_ids, held = shards.split_eval(store.documents, case["eval_ratio"], 7)
    train_tokens = int(store.lengths[train_ids].sum())
    try:
        layout = lay_out(spec, store, use_gpu=False, store_dir=str(store_dir), model_dir="")
    except ByzerError as err:  # too little data: refused before anything starts, never a silent 0
        assert train_tokens // case["max_length"] < shape.sequences and "too few" in str(err)
        return
    runs = trained(spec, layout, store_dir)
    # (a) planned == trained, the same for every worker
    assert {len(seqs) for seqs in runs.values()} == {layout.total_steps * shape.per_worker}
    # (b) all but less than one global batch of the training split, each sequence once
    done = sum(len(s) for seqs in runs.values() for s in seqs)
    assert train_tokens - shape.tokens < done <= train_tokens
    stream = shards.EpochStream(store.tokens, store.starts, store.lengths,
                                shards.epoch_order(train_ids, 0, 7, True), case["max_length"])
    everything = np.concatenate([stream.sequence(j) for j in range(layout.total_steps * shape.sequences)])
    mine = np.concatenate([s for seqs in runs.values() for s in seqs])
    assert sorted(map(tuple, mine.reshape(-1, case["max_length"]))) == \
        sorted(map(tuple, everything.reshape(-1, case["max_length"])))
    # held-out documents are evaluated, never trained
    assert layout.corpus.eval_documents == len(held)
    evaluates = bool(len(held)) and store.lengths[held].sum() >= 2
    assert bool(WorkerData(spec, layout, 0).eval_batches()) == evaluates


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layouts, cut=st.floats(0, 1))
def test_resume_at_any_step_trains_exactly_the_rest(tmp_path_factory, case, cut):
    store_dir = tmp_path_factory.mktemp("store") / "tokens"
    store = make_store(store_dir, case["lengths"] * 3)
    spec = spec_for(workers=case["workers"], micro=case["micro"], gas=case["gas"], max_length=case["max_length"],
                    epochs=2)
    try:
        layout = lay_out(spec, store, use_gpu=False, store_dir=str(store_dir), model_dir="")
    except ByzerError:
        return
    start = int(cut * layout.total_steps)
    whole, rest = trained(spec, layout, store_dir), trained(spec, layout, store_dir, start)
    per_worker = layout.micro_batch * layout.grad_accum
    for rank in whole:
        assert [s.tolist() for s in whole[rank][start * per_worker:]] == [s.tolist() for s in rest[rank]]


def test_epochs_are_shuffled_differently_and_deterministically(tmp_path):
    store = make_store(tmp_path / "tokens", [50] * 40)
    spec = spec_for(workers=2, micro=1, gas=1, max_length=25, epochs=2)
    layout = lay_out(spec, store, use_gpu=False, store_dir=str(tmp_path / "tokens"), model_dir="")
    first, second = (WorkerData(spec, layout, 0).step(s)[0][0].tolist() for s in (0, layout.steps_per_epoch))
    assert first != second
    assert WorkerData(spec, layout, 0).step(0)[0][0].tolist() == first  # the same on a restart
    unshuffled = spec_for(workers=2, micro=1, gas=1, max_length=25, shuffle=False)
    layout = lay_out(unshuffled, store, use_gpu=False, store_dir=str(tmp_path / "tokens"), model_dir="")
    assert WorkerData(unshuffled, layout, 0).step(0)[0][0].tolist() == store.tokens[:25].tolist()


def test_uneven_partitions_are_balanced_over_the_workers(tmp_path):
    """keepPartitionNum over partitions of very unequal size: every worker trains the same number of
    steps and all but less than one global batch of the tokens (the layout notes what moved)."""
    lengths, parts = [300] * 30 + [20] * 10 + [900], [0] * 30 + [1] * 10 + [2]
    store = make_store(tmp_path / "tokens", lengths, parts)
    spec = spec_for(workers=3, micro=2, gas=1, max_length=32, keep=True)
    layout = lay_out(spec, store, use_gpu=False, store_dir=str(tmp_path / "tokens"), model_dir="", partitions=3)
    runs = trained(spec, layout, tmp_path / "tokens")
    assert len({len(s) for s in runs.values()}) == 1
    assert sum(lengths) - 3 * 2 * 32 < sum(len(s) for seqs in runs.values() for s in seqs) <= sum(lengths)
    assert any("partition 1: 200 tokens" in note for note in layout.notes)
    # worker 0 trains partition 0's documents only (it is the largest share's owner)
    assert all(seq.max() < 1000 * 30 for seq in runs[0])


def test_partitions_must_match_the_workers(tmp_path):
    store = make_store(tmp_path / "tokens", [100] * 8, [0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(ByzerError, match='4 partition.*2 worker.*partitionNum="2"'):
        lay_out(spec_for(workers=2, micro=1, gas=1, max_length=16, keep=True), store, use_gpu=False,
                store_dir=str(tmp_path / "tokens"), model_dir="", partitions=4)


def test_steps_beyond_the_data_are_refused(tmp_path):
    store = make_store(tmp_path / "tokens", [100] * 4)
    with pytest.raises(ByzerError, match="steps_per_epoch=50 needs"):
        lay_out(spec_for(workers=1, micro=1, gas=1, max_length=10, steps=50), store, use_gpu=False,
                store_dir=str(tmp_path / "tokens"), model_dir="")


def test_docs_list_every_training_argument():
    """docs/LANGUAGE.md's table of `sfft.<type>.<key>` arguments cannot drift from runtime/spec.py."""
    from pathlib import Path

    from byzer_magic.runtime.spec import kind_of, sfft_fields

    text = (Path(__file__).parents[1] / "docs" / "LANGUAGE.md").read_text()
    for name, (_, f) in sfft_fields().items():
        assert f"| `{name}` | {kind_of(f).__name__} |" in text, name
