"""Lay out the run from the tokenised corpus: the DeepSpeed config for the hardware, the batch shape,
the held-out split, and the exact number of steps every worker trains (``runtime/shards.py``)."""
from __future__ import annotations

import numpy as np

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import shards
from byzer_magic.runtime.config import resolve_ds_config
from byzer_magic.runtime.spec import CorpusStats, JobLayout, JobSpec
from byzer_magic.runtime.token_store import TokenStore

EVALS_PER_RUN = 10  # the default eval_every: this many evaluations over the run (and one at the end)


def default_batch(user: dict, *, use_gpu: bool, max_length: int, workers: int, max_micro: int | None,
                  data_tokens: int | None, epochs: int, steps_per_epoch: int | None) -> tuple[dict, str | None]:
    """The user's DeepSpeed config with the micro-batch and accumulation it leaves out chosen for a GPU run
    (``runtime/batch_defaults.py``: a sound number of tokens per optimizer step), and the plan's note. On
    the CPU, what is left out stays 1 x 1 (DEFAULT_CONFIG's tiny runs)."""
    micro_key, gas_key = "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"
    if not use_gpu or (micro_key in user and gas_key in user):
        return user, None
    from byzer_magic.runtime.batch_defaults import choose_batch  # noqa: PLC0415

    choice = choose_batch(max_length=max_length, workers=workers, max_micro=max_micro, user_micro=user.get(micro_key),
                          user_gas=user.get(gas_key), data_tokens=data_tokens, epochs=epochs,
                          steps_per_epoch=steps_per_epoch)
    return {**user, micro_key: choice.micro, gas_key: choice.gas}, choice.note


def batch_shape(spec: JobSpec, ds_config: dict) -> shards.BatchShape:
    return shards.BatchShape(max_length=spec.data.max_length, workers=spec.parallel.num_workers,
                             micro_batch=int(ds_config["train_micro_batch_size_per_gpu"]),
                             grad_accum=int(ds_config["gradient_accumulation_steps"]))


def corpus_stats(spec: JobSpec, store: TokenStore) -> CorpusStats:
    """Token counts of the whole corpus, its training split and its held-out split."""
    lengths = store.lengths
    train, held = shards.split_eval(store.documents, spec.eval.eval_ratio, spec.training.seed)
    partition_tokens = None
    if store.parts is not None:
        counts = np.bincount(store.parts[train], weights=lengths[train], minlength=spec.parallel.num_workers)
        partition_tokens = [int(c) for c in counts]
    return CorpusStats(documents=store.documents, tokens=int(lengths.sum()), train_documents=len(train),
                       train_tokens=int(lengths[train].sum()), eval_documents=len(held),
                       eval_tokens=int(lengths[held].sum()), partition_tokens=partition_tokens)


def lay_out(spec: JobSpec, store: TokenStore, *, use_gpu: bool, store_dir: str, model_dir: str,
            partitions: int = 0) -> JobLayout:
    """The run every worker will train, or a ``ByzerError`` saying why it cannot start."""
    if spec.data.keep_partition_num and partitions != spec.parallel.num_workers:
        raise ByzerError(f"keepPartitionNum: the input has {partitions} partition(s) for {spec.parallel.num_workers} "
                         f"worker(s); they must be equal: run <table> as TableRepartition.`` where "
                         f'partitionNum="{spec.parallel.num_workers}" ... first, or drop keepPartitionNum')
    corpus = corpus_stats(spec, store)
    # Steps are laid out first with the user's (or default) batch, then the schedule gets its length.
    user, batch_note = default_batch(spec.deepspeed.config, use_gpu=use_gpu, max_length=spec.data.max_length,
                                     workers=spec.parallel.num_workers, max_micro=spec.deepspeed.max_micro_batch,
                                     data_tokens=corpus.train_tokens, epochs=spec.training.epoches,
                                     steps_per_epoch=spec.training.steps_per_epoch)
    probe, _ = resolve_ds_config(user, on_gpu=use_gpu)
    shape = batch_shape(spec, probe)
    available = shards.steps_per_epoch(corpus.train_tokens, shape)
    per_epoch = spec.training.steps_per_epoch or available
    if available == 0:
        raise ByzerError(f"the input has {corpus.train_tokens:,} training tokens ({corpus.train_tokens // shape.max_length:,} "
                         f"sequences of {shape.max_length}): too few for one step of {shape.workers} worker(s) x "
                         f"micro-batch {shape.micro_batch} x accumulation {shape.grad_accum} "
                         f"({shape.sequences} sequences); add data or lower max_length / num_gpus")
    if per_epoch > available:
        raise ByzerError(f"steps_per_epoch={per_epoch} needs {per_epoch * shape.tokens:,} tokens per epoch but the "
                         f"training split has {corpus.train_tokens:,} ({available} steps): lower "
                         f"sfft.int.steps_per_epoch, or leave it out for one pass over the data")
    total = per_epoch * spec.training.epoches
    ds_config, notes = resolve_ds_config(user, on_gpu=use_gpu, total_steps=total,
                                         warmup_ratio=spec.training.warmup_ratio)
    notes += [batch_note] if batch_note else []
    if corpus.partition_tokens is not None:
        notes += shards.partition_report(corpus.partition_tokens, shape)
    evaluates = corpus.eval_tokens >= 2  # a loss needs a token and the one after it
    if spec.eval.eval_ratio > 0 and not evaluates:
        notes.append("no held-out evaluation: the input has too few documents to hold one out")
    eval_every = spec.eval.eval_every or max(1, total // EVALS_PER_RUN)
    return JobLayout(use_gpu=use_gpu, micro_batch=shape.micro_batch, grad_accum=shape.grad_accum,
                     ds_config=ds_config, corpus=corpus, sequences_per_epoch=per_epoch * shape.per_worker,
                     steps_per_epoch=per_epoch, total_steps=total, tokens_per_step=shape.tokens,
                     eval_every=eval_every, eval_sequences=spec.eval.eval_sequences if evaluates else 0,
                     store_dir=store_dir, model_dir=model_dir, notes=notes)
