"""Tokenise the job's input once, in Ray Data tasks on the cluster's CPUs, into the token store
(``runtime/token_store.py``) that every worker reads.

Tasks write token ids as parquet (streamed: no task holds more than its batch); the driver then lays
those files end to end into the store, reading one batch at a time. With keepPartitionNum each input
partition is tokenised by its own task, in order, and its documents are marked with its index.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from byzer_magic.runtime import token_store
from byzer_magic.runtime.tokenizer import cached_tokenizer

_BATCH = 256
_IN_FLIGHT = 8  # partition tasks at once (each holds one partition's rows)


def tokenize_batch(batch: pa.Table, *, tokenizer_path: str, text_column: str = "text") -> pa.Table:
    """Arrow batch of documents -> Arrow batch of token ids (end-of-text appended) and their counts."""
    tok = cached_tokenizer(tokenizer_path)
    texts = [t or "" for t in batch.column(text_column).to_pylist()]
    ids = tok.encode_documents(texts)
    eos = np.array([tok.eos_id], dtype=np.int32)
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum([len(x) + 1 for x in ids], out=offsets[1:])
    flat = np.concatenate([part for x in ids for part in (x, eos)]) if ids else np.empty(0, np.int32)
    return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
                     "n": pa.array(np.diff(offsets))})


def build_store(make_dataset: Callable[[], object], store_dir: Path, *, tokenizer_path: str, text_column: str,
                by_partition: bool, read_here: Callable[[], Iterable[pa.Table] | None] = lambda: None) -> int:
    """Tokenise the input (``make_dataset()``, a Ray Dataset) into the store at ``store_dir``, unless it is
    built already; returns the number of partitions (keepPartitionNum) or 0. ``read_here()``: the input's
    rows as Arrow tables, tokenised in this process instead (a small input: driver/inputs.py), or None."""
    if token_store.is_built(store_dir):
        return token_store.TokenStore.open(store_dir).partitions
    here = None if by_partition else read_here()
    if here is not None:
        vocab = cached_tokenizer(tokenizer_path).vocab_size
        token_store.write_store(store_dir, _tokenised_here(here, tokenizer_path, text_column), vocab_size=vocab)
        return 0
    ds = make_dataset()
    cache = store_dir.with_name(store_dir.name + ".parquet")
    shutil.rmtree(cache, ignore_errors=True)
    kwargs = {"tokenizer_path": tokenizer_path, "text_column": text_column}
    partitions = _tokenise_partitions(ds, cache, kwargs) if by_partition else 0
    if not by_partition:
        tokenised(ds, kwargs).write_parquet(str(cache))
    vocab = cached_tokenizer(tokenizer_path).vocab_size
    token_store.write_store(store_dir, _cached_batches(cache, by_partition), vocab_size=vocab,
                             partitions=partitions)
    shutil.rmtree(cache, ignore_errors=True)
    return partitions


def tokenised(ds, kwargs: dict):
    """``ds``'s text as token ids, a block per call: a batch size in rows would be fused with load_text's
    read (tables/text.py) into one task reading that many of its pieces (up to 64 MB each: a 1 GB corpus
    was one task, all of it in memory), where a block is one piece."""
    return ds.map_batches(tokenize_batch, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                          fn_kwargs=kwargs)


def _tokenise_partitions(source, cache: Path, kwargs: dict) -> int:
    """One task per partition, in order, each writing ``part-<i>.parquet``; at most ``_IN_FLIGHT`` at
    once. ``source``: a Dataset whose blocks are the partitions (the plan preserves their order), or a
    list of parquet files, one per partition (the kernel's snapshot)."""
    import ray  # noqa: PLC0415

    cache.mkdir(parents=True)
    if isinstance(source, list):
        blocks = iter(source)
    else:
        source.context.execution_options.preserve_order = True
        blocks = (block for bundle in source.iter_internal_ref_bundles() for block in bundle.block_refs)
    task = ray.remote(num_cpus=1)(_tokenise_partition)
    pending, index = [], 0
    for block in blocks:
        pending.append(task.remote(block, str(cache / f"part-{index:06d}.parquet"), index, kwargs))
        index += 1
        if len(pending) >= _IN_FLIGHT:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
    ray.get(pending)
    return index


def _tokenise_partition(block, path: str, index: int, kwargs: dict) -> None:
    import pyarrow.parquet as pq  # noqa: PLC0415

    if isinstance(block, str):
        block = pq.read_table(block, columns=[kwargs["text_column"]])
    table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
    pieces = [tokenize_batch(b, **kwargs) for b in table.to_batches(max_chunksize=_BATCH)] or \
        [tokenize_batch(table.slice(0, 0), **kwargs)]
    tokens = pa.concat_tables(pieces)
    pq.write_table(tokens.append_column("part", pa.array([index] * tokens.num_rows, pa.int32())), path)


def _tokenised_here(tables: Iterable[pa.Table], tokenizer_path: str,
                    text_column: str) -> Iterator[tuple[np.ndarray, np.ndarray, None]]:
    for table in tables:
        for batch in table.to_batches(max_chunksize=_BATCH):
            ids = tokenize_batch(pa.Table.from_batches([batch]), tokenizer_path=tokenizer_path,
                                 text_column=text_column).column("ids").combine_chunks()
            yield *_flat(ids), None


def _flat(ids: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """A list column of token ids as (the ids end to end, each row's length)."""
    offsets = ids.offsets.to_numpy()
    return ids.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]], np.diff(offsets)


def _cached_batches(cache: Path, by_partition: bool) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """The parquet files' batches in a fixed order (file name, then row): (flat ids, lengths, parts)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    for path in sorted(cache.rglob("*.parquet")):
        columns = ["ids", "part"] if by_partition else ["ids"]
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=columns):
            parts = batch.column(1).to_numpy(zero_copy_only=False) if by_partition else None
            yield *_flat(batch.column(0)), parts
