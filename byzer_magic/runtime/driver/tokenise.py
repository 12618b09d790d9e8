"""Tokenise the job's input once, in Ray Data tasks on the cluster's CPUs, into the token store
(``runtime/token_store.py``) that every worker reads.

Each task tokenises one block of the input (a piece of load_text's files, or one partition) and writes
its ids as a piece of the store, in the store's dtype, next to it (``<store>.pieces/``); it returns only
the piece's name. The driver lays the pieces end to end into the store in the input's order as they
come, while the tasks tokenise the next ones: a file copy, no ids decoded or re-encoded. With
keepPartitionNum each input partition is tokenised by its own task, in order, and its documents are
marked with its index.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from byzer_magic.runtime import cluster, token_store
from byzer_magic.runtime.tokenizer import Tokenizer, cached_tokenizer

_BATCH = 256  # documents per tokenizer call when tokenising in this process
_IN_FLIGHT = 8  # partition tasks at once (each holds one partition's rows)


def encoded(texts: list[str | None], tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The documents' ids end to end, an end-of-text after each, in the store's dtype; each one's length."""
    return tok.encode_flat([t or "" for t in texts], dtype=token_store.token_dtype(tok.vocab_size))


def count_tokens(batch: pa.Table, *, tokenizer_path: str, text_column: str) -> pa.Table:
    """Each document's token count, end-of-text included (the plan's estimate: kernel/plan.py)."""
    _, lengths = encoded(batch.column(text_column).to_pylist(), cached_tokenizer(tokenizer_path))
    return pa.table({"n": lengths})


def write_piece(batch: pa.Table, *, tokenizer_path: str, text_column: str, pieces_dir: str,
                part: int = -1) -> pa.Table:
    """Tokenise a block of documents into ``<pieces_dir>/<name>.bin`` (the ids) and ``<name>.npy`` (the
    documents' lengths); a row naming the piece and ``part`` (keepPartitionNum's index)."""
    flat, lengths = encoded(batch.column(text_column).to_pylist(), cached_tokenizer(tokenizer_path))
    name = uuid.uuid4().hex
    with open(Path(pieces_dir) / f"{name}.bin", "wb") as out:
        out.write(flat)
    np.save(Path(pieces_dir) / f"{name}.npy", lengths)
    return pa.table({"piece": [name], "part": pa.array([part], pa.int32())})


def build_store(make_dataset: Callable[[], object], store_dir: Path, *, tokenizer_path: str, text_column: str,
                by_partition: bool, read_here: Callable[[], Iterable[pa.Table] | None] = lambda: None) -> int:
    """Tokenise the input (``make_dataset()``, a Ray Dataset) into the store at ``store_dir``, unless it is
    built already; returns the number of partitions (keepPartitionNum) or 0. ``read_here()``: the input's
    rows as Arrow tables, tokenised in this process instead (a small input: driver/inputs.py), or None."""
    if token_store.is_built(store_dir):
        return token_store.TokenStore.open(store_dir).partitions
    vocab = cached_tokenizer(tokenizer_path).vocab_size
    here = None if by_partition else read_here()
    if here is not None:
        token_store.write_store(store_dir, _tokenised_here(here, tokenizer_path, text_column), vocab_size=vocab)
        return 0
    pieces_dir = store_dir.with_name(store_dir.name + ".pieces")
    shutil.rmtree(pieces_dir, ignore_errors=True)
    pieces_dir.mkdir(parents=True)
    kwargs = {"tokenizer_path": tokenizer_path, "text_column": text_column, "pieces_dir": str(pieces_dir)}
    source = make_dataset()
    if by_partition:
        rows = _tokenise_partitions(source, kwargs)
    else:
        from ray.data import ExecutionResources  # noqa: PLC0415

        source.context.execution_options.preserve_order = True  # the pieces in the input's order
        source.context.execution_options.resource_limits = ExecutionResources(cpu=cluster.cpu_slots())
        rows = tokenised(source, kwargs).iter_rows()  # each piece joined as soon as those before it are
    partitions = len(rows) if by_partition else 0
    token_store.join_pieces(store_dir, _pieces(pieces_dir, rows, by_partition), vocab_size=vocab,
                            partitions=partitions)
    shutil.rmtree(pieces_dir, ignore_errors=True)
    return partitions


def tokenised(ds, kwargs: dict):
    """``ds``'s text written as pieces (``write_piece``), a block per task: a batch size in rows would be
    fused with load_text's read (tables/text.py) into one task reading that many of its pieces (up to
    64 MB each: a 1 GB corpus was one task, all of it in memory), where a block is one piece."""
    return ds.map_batches(write_piece, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                          fn_kwargs=kwargs)


def _tokenise_partitions(source, kwargs: dict) -> list[dict]:
    """One task per partition, in order; at most ``_IN_FLIGHT`` at once. ``source``: a Dataset whose
    blocks are the partitions (the plan preserves their order), or a list of parquet files, one per
    partition (the kernel's snapshot). The pieces' rows, in the partitions' order."""
    import ray  # noqa: PLC0415

    if isinstance(source, list):
        blocks = iter(source)
    else:
        source.context.execution_options.preserve_order = True
        blocks = (block for bundle in source.iter_internal_ref_bundles() for block in bundle.block_refs)
    task = ray.remote(num_cpus=1)(_tokenise_partition)
    pending, done, in_flight = [], [], min(_IN_FLIGHT, cluster.cpu_slots())
    for index, block in enumerate(blocks):
        pending.append(task.remote(block, index, kwargs))
        if len(pending) >= in_flight:
            done.extend(ray.get(pending[:1]))
            pending = pending[1:]
    return done + ray.get(pending)


def _tokenise_partition(block, index: int, kwargs: dict) -> dict:
    import pyarrow.parquet as pq  # noqa: PLC0415

    if isinstance(block, str):
        block = pq.read_table(block, columns=[kwargs["text_column"]])
    table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
    return write_piece(table, part=index, **kwargs).to_pylist()[0]


def _tokenised_here(tables: Iterable[pa.Table], tokenizer_path: str,
                    text_column: str) -> Iterator[tuple[np.ndarray, np.ndarray, None]]:
    tok = cached_tokenizer(tokenizer_path)
    for table in tables:
        for batch in table.to_batches(max_chunksize=_BATCH):
            yield *encoded(batch.column(text_column).to_pylist(), tok), None


def _pieces(pieces_dir: Path, rows: Iterable[dict],
            by_partition: bool) -> Iterator[tuple[Path, np.ndarray, np.ndarray | None]]:
    """The pieces' (ids file, lengths, parts) in ``rows``' order, as the rows come (the tasks may still be
    tokenising the next ones); each piece's files are removed once the store has taken it."""
    for row in rows:
        ids, lengths_file = pieces_dir / f"{row['piece']}.bin", pieces_dir / f"{row['piece']}.npy"
        lengths = np.load(lengths_file)
        yield ids, lengths, np.full(len(lengths), row["part"], np.int32) if by_partition else None
        ids.unlink()
        lengths_file.unlink()
