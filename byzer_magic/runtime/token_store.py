"""The job's tokenised corpus on shared storage: every document's token ids end to end in one flat
file, with an offsets array (the layout of Megatron's and nanoGPT's indexed datasets). Any worker
reads any sequence from it through a memory map, so the shards of ``runtime/shards.py`` cost nothing
to change and a resumed worker starts at its step without reading what it skips.

The driver writes it once per job (``driver/tokenise.py``) and publishes it by rename; a resumed job
reuses it. Files: ``tokens.bin`` (uint16 when the vocabulary fits, else uint32), ``offsets.npy``
(int64, documents + 1), ``parts.npy`` (int32 partition of each document, keepPartitionNum only).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

_DONE = "_SUCCESS"


@dataclass
class TokenStore:
    tokens: np.ndarray          # memory-mapped, flat
    offsets: np.ndarray         # document d is tokens[offsets[d]:offsets[d + 1]]
    parts: np.ndarray | None    # partition of each document (keepPartitionNum)
    partitions: int = 0         # keepPartitionNum: how many partitions the input had (empty ones too)

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def starts(self) -> np.ndarray:
        return self.offsets[:-1]

    @classmethod
    def open(cls, root: str | os.PathLike) -> "TokenStore":
        root = Path(root)
        meta = json.loads((root / "meta.json").read_text())
        tokens = np.memmap(root / "tokens.bin", dtype=meta["dtype"], mode="r") if meta["tokens"] else \
            np.zeros(0, dtype=meta["dtype"])
        parts = np.load(root / "parts.npy") if (root / "parts.npy").exists() else None
        return cls(tokens=tokens, offsets=np.load(root / "offsets.npy"), parts=parts,
                   partitions=meta.get("partitions", 0))


def is_built(root: str | os.PathLike) -> bool:
    return (Path(root) / _DONE).exists()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_store(root: str | os.PathLike, documents: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                *, vocab_size: int, partitions: int = 0) -> Path:
    """Write a store from ``(flat ids, lengths, parts or None)`` batches, streamed (bounded memory), into a
    temporary folder published by rename: a half-written store is never used."""
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = token_dtype(vocab_size)
    lengths, parts, total = [], [], 0
    with open(tmp / "tokens.bin", "wb") as out:
        for ids, batch_lengths, batch_parts in documents:
            out.write(np.asarray(ids, dtype=dtype).tobytes())
            lengths.append(np.asarray(batch_lengths, dtype=np.int64))
            total += int(lengths[-1].sum())
            if batch_parts is not None:
                parts.append(np.asarray(batch_parts, dtype=np.int32))
        out.flush()
        os.fsync(out.fileno())
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64))
    if parts:
        np.save(tmp / "parts.npy", np.concatenate(parts))
    (tmp / "meta.json").write_text(json.dumps({"dtype": dtype.name, "documents": len(all_lengths),
                                               "tokens": total,
                                               "partitions": partitions}))
    (tmp / _DONE).write_text("")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root
