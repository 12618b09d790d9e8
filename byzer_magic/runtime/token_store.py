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
from typing import Iterable, Iterator

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
    dtype = token_dtype(vocab_size)

    def write(out) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for ids, lengths, parts in documents:
            out.write(np.ascontiguousarray(ids, dtype=dtype))
            yield lengths, parts
    return _publish(root, write, dtype, partitions)


def join_pieces(root: str | os.PathLike, pieces: Iterable[tuple[Path, np.ndarray, np.ndarray | None]], *,
                vocab_size: int, partitions: int = 0) -> Path:
    """``write_store`` from ``(file of ids in the store's dtype, lengths, parts or None)``: each file is
    appended by the operating system (``os.copy_file_range``), its ids never read into this process."""
    def write(out) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for path, lengths, parts in pieces:
            with open(path, "rb") as piece:
                _append(piece, out)
            yield lengths, parts
    return _publish(root, write, token_dtype(vocab_size), partitions)


def _append(piece, out) -> None:
    out.flush()
    left = os.fstat(piece.fileno()).st_size
    try:
        while left > 0:
            copied = os.copy_file_range(piece.fileno(), out.fileno(), left)
            if copied == 0:
                raise OSError("copy_file_range copied nothing")
            left -= copied
    except (AttributeError, OSError):  # not Linux, or a file system that refuses it: copy through here
        piece.seek(os.fstat(piece.fileno()).st_size - left)
        out.seek(0, os.SEEK_END)
        shutil.copyfileobj(piece, out, 16 << 20)


def _publish(root: str | os.PathLike, write, dtype: np.dtype, partitions: int) -> Path:
    """Run ``write(tokens.bin)`` (it yields each batch's lengths and parts) in a temporary folder, add the
    offsets and meta.json, and rename the folder to ``root``."""
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths, parts = [], []
    with open(tmp / "tokens.bin", "wb") as out:
        for batch_lengths, batch_parts in write(out):
            lengths.append(np.asarray(batch_lengths, dtype=np.int64))
            if batch_parts is not None:
                parts.append(np.asarray(batch_parts, dtype=np.int32))
        out.flush()
        os.fsync(out.fileno())
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64)
    if (tmp / "tokens.bin").stat().st_size != offsets[-1] * dtype.itemsize:
        raise OSError(f"{tmp / 'tokens.bin'}: {(tmp / 'tokens.bin').stat().st_size} bytes written for "
                      f"{offsets[-1]} tokens of {dtype.itemsize} bytes")
    np.save(tmp / "offsets.npy", offsets)
    if parts:
        np.save(tmp / "parts.npy", np.concatenate(parts))
    (tmp / "meta.json").write_text(json.dumps({"dtype": dtype.name, "documents": len(all_lengths),
                                               "tokens": int(offsets[-1]), "partitions": partitions}))
    (tmp / _DONE).write_text("")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root
