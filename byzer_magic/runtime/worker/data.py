"""Training data: tokenise documents in Ray Data on the cluster's CPUs, then pack them into
``max_length`` sequences on each worker.

Packing happens on the worker, over its whole shard, so that a document's tail carries into the next
sequence instead of being dropped (Byzer dropped each file's tail): the only tokens a worker never
trains on are its final partial sequence. Tokens stay in Arrow/NumPy arrays end to end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from byzer_magic.runtime.tokenizer import cached_tokenizer

TOKENS_DIR = "tokens"


def tokenize_batch(batch: pa.Table, *, tokenizer_path: str, text_column: str = "text",
                   keep_columns: tuple[str, ...] = ()) -> pa.Table:
    """Arrow batch of documents -> Arrow batch of token ids (end-of-text appended) and their counts."""
    tok = cached_tokenizer(tokenizer_path)
    texts = [t or "" for t in batch.column(text_column).to_pylist()]
    ids = [np.asarray(x + [tok.eos_id], dtype=np.int32) for x in tok.encode_batch(texts)]
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = np.concatenate(ids) if ids else np.empty(0, np.int32)
    columns = {"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
               "n": pa.array(np.diff(offsets))}
    for name in keep_columns:
        columns[name] = batch.column(name)
    return pa.table(columns)


def build_token_cache(ds, out_dir: Path, *, tokenizer_path: str, text_column: str = "text",
                      partition_column: str | None = None) -> Path:
    """Tokenise ``ds`` (streamed, in Ray Data tasks) into parquet under ``out_dir``; written to a
    temporary folder and published by rename, so a half-written cache is never used."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    if (out_dir / "_SUCCESS").exists():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    keep = (partition_column,) if partition_column else ()
    tokens = ds.map_batches(tokenize_batch, batch_format="pyarrow", batch_size=256, zero_copy_batch=True,
                            fn_kwargs={"tokenizer_path": tokenizer_path, "text_column": text_column,
                                       "keep_columns": keep})
    tokens.write_parquet(str(tmp), partition_cols=[partition_column] if partition_column else None)
    (tmp / "_SUCCESS").write_text("")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def count_tokens(cache_dir: Path) -> tuple[int, int]:
    """(documents, tokens) in a token cache, read from the small ``n`` column only."""
    import pyarrow.dataset as pads  # noqa: PLC0415

    table = pads.dataset(str(cache_dir), format="parquet", partitioning="hive",
                         exclude_invalid_files=True).to_table(columns=["n"])
    return table.num_rows, int(pa.compute.sum(table.column("n")).as_py() or 0)


def pack_sequences(id_batches: Iterable[Iterable[np.ndarray]], length: int) -> Iterator[np.ndarray]:
    """Concatenate documents' token ids and cut them into ``length``-token sequences."""
    pending: list[np.ndarray] = []
    size = 0
    for batch in id_batches:
        for ids in batch:
            pending.append(np.asarray(ids, dtype=np.int64))
            size += len(ids)
        if size >= length:
            flat = np.concatenate(pending)
            whole = (len(flat) // length) * length
            yield from flat[:whole].reshape(-1, length)
            pending, size = [flat[whole:]], len(flat) - whole


def micro_batches(sequences: Iterator[np.ndarray], micro_batch: int) -> Iterator[np.ndarray]:
    """Group packed sequences into [micro_batch, length] arrays (a trailing partial group is dropped)."""
    group: list[np.ndarray] = []
    for seq in sequences:
        group.append(seq)
        if len(group) == micro_batch:
            yield np.stack(group)
            group = []


def rank_sequences(tokens_dir: str | Path, rank: int, world: int, length: int, *,
                   by_partition: bool = False) -> Iterator[np.ndarray]:
    """This worker's packed sequences, the same on every run (so a resumed run skips exactly what it
    trained): whole files round-robin when there are at least as many files as workers (or, with
    ``by_partition``, partition i to worker i mod world), else every world-th sequence of all files."""
    root = Path(tokens_dir)
    if by_partition:
        parts = sorted(root.glob("part=*"), key=lambda p: int(p.name.split("=")[1]))
        files = [f for i, part in enumerate(parts) if i % world == rank for f in sorted(part.rglob("*.parquet"))]
        stride = 1
    else:
        every = sorted(root.rglob("*.parquet"))
        files, stride = (every[rank::world], 1) if len(every) >= world else (every, world)
    sequences = pack_sequences(_file_id_batches(files), length)
    for index, seq in enumerate(sequences):
        if index % stride == (rank if stride > 1 else 0):
            yield seq


def _file_id_batches(files: list[Path], batch_size: int = 256) -> Iterator[list[np.ndarray]]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["ids"]):
            column = batch.column(0)
            values = column.values.to_numpy(zero_copy_only=False)
            offsets = column.offsets.to_numpy()
            yield [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
