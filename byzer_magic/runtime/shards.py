"""Which tokens each worker trains on, step by step: pure arithmetic over document lengths, shared by
the pre-flight plan (kernel), the job's driver and the workers, so that the steps announced are the
steps trained.

The training documents of an epoch (all documents but the held-out ones, shuffled with the seed and
the epoch number) are laid end to end into one stream and cut into ``max_length`` sequences. Each
optimizer step takes ``workers x micro_batch x grad_accum`` consecutive sequences of it (a *global
batch*), so every worker trains the same number of sequences and an epoch trains all of its tokens but
less than one global batch. With ``keepPartitionNum`` the stream is the partitions in order (each
shuffled on its own) and worker i takes the i-th equal share of it: partition i, when the partitions
are of equal size. Everything is a function of (lengths, seed, epoch, step): a resumed run trains
exactly what the interrupted one had not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EVAL_STREAM = 0xE7A1  # the held-out split's random stream (apart from the epochs' shuffles)


@dataclass(frozen=True)
class BatchShape:
    """What one optimizer step takes: ``workers x micro_batch x grad_accum`` sequences of ``max_length``."""
    max_length: int
    workers: int
    micro_batch: int
    grad_accum: int

    @property
    def per_worker(self) -> int:
        """Sequences one worker trains per step."""
        return self.micro_batch * self.grad_accum

    @property
    def sequences(self) -> int:
        """Sequences of a global batch (all workers)."""
        return self.workers * self.per_worker

    @property
    def tokens(self) -> int:
        return self.sequences * self.max_length


def split_eval(documents: int, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, held-out ids), both sorted: ``ratio`` of the documents (at least one when the
    ratio is above 0 and there are two or more), drawn with the seed, the same in every epoch."""
    held = 0 if ratio <= 0 or documents < 2 else min(documents - 1, max(1, round(documents * ratio)))
    order = np.random.default_rng([seed, _EVAL_STREAM]).permutation(documents)
    return np.sort(order[held:]), np.sort(order[:held])


def epoch_order(doc_ids: np.ndarray, epoch: int, seed: int, shuffle: bool,
                parts: np.ndarray | None = None) -> np.ndarray:
    """The training documents in the order epoch ``epoch`` reads them. ``parts`` (the partition of
    each document, keepPartitionNum): partitions stay in order, each shuffled on its own."""
    if not shuffle:
        return doc_ids if parts is None else doc_ids[np.argsort(parts[doc_ids], kind="stable")]
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(doc_ids)
    if parts is None:
        return shuffled
    return shuffled[np.argsort(parts[shuffled], kind="stable")]


def steps_per_epoch(train_tokens: int, shape: BatchShape) -> int:
    """Optimizer steps one epoch of ``train_tokens`` gives (every worker the same number)."""
    return (train_tokens // shape.max_length) // shape.sequences


def sequence_index(step: int, rank: int, k: int, shape: BatchShape, steps: int, by_partition: bool) -> int:
    """Index in the epoch's stream of the ``k``-th sequence (of ``per_worker``) that worker ``rank``
    trains at ``step`` (0-based within the epoch of ``steps`` steps). Without partitions a global batch is
    a run of consecutive sequences, worker after worker; with them each worker owns a contiguous share."""
    if by_partition:
        return rank * steps * shape.per_worker + step * shape.per_worker + k
    return (step * shape.workers + rank) * shape.per_worker + k


def partition_report(part_tokens: list[int], shape: BatchShape) -> list[str]:
    """How keepPartitionNum's equal shares differ from the partitions: one line per partition whose
    share comes partly from its neighbours (empty when the partitions are of equal size, to a sequence)."""
    total = sum(part_tokens)
    share = total // max(1, len(part_tokens))
    lines = []
    for i, tokens in enumerate(part_tokens):
        moved = abs(tokens - share)
        if moved >= shape.max_length:
            way = "from" if tokens < share else "to"
            lines.append(f"partition {i}: {tokens:,} tokens; worker {i} trains {share:,} "
                         f"({moved:,} {way} its neighbours)")
    return lines


class EpochStream:
    """The epoch's stream over a token store: sequence ``j`` is tokens ``[j*L, (j+1)*L)`` of the
    documents ``doc_ids`` laid end to end. ``offsets[d]``/``lengths[d]``: where document d's tokens are
    in the flat ``tokens`` array (a memory map: only the sequences asked for are read)."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, doc_ids: np.ndarray,
                 length: int):
        self.tokens, self.length = tokens, length
        self.starts = offsets[doc_ids]
        self.ends = np.concatenate([[0], np.cumsum(lengths[doc_ids], dtype=np.int64)])

    @property
    def size(self) -> int:
        """Whole sequences in the stream."""
        return int(self.ends[-1]) // self.length

    def sequence(self, j: int) -> np.ndarray:
        lo, hi = j * self.length, (j + 1) * self.length
        if hi > self.ends[-1]:
            raise IndexError(f"sequence {j} is past the stream's {self.size} sequences")
        k = int(np.searchsorted(self.ends, lo, side="right")) - 1
        pieces, pos = [], lo
        while pos < hi:
            take = min(hi, int(self.ends[k + 1])) - pos
            start = int(self.starts[k]) + pos - int(self.ends[k])
            pieces.append(self.tokens[start:start + take])
            pos += take
            k += 1
        return np.concatenate(pieces).astype(np.int64, copy=False)

    def tail(self) -> np.ndarray | None:
        """The tokens after the last whole sequence (held-out evaluation uses them when the split is
        shorter than one sequence)."""
        lo = self.size * self.length
        if lo >= self.ends[-1]:
            return None
        k = int(np.searchsorted(self.ends, lo, side="right")) - 1
        pieces, pos = [], lo
        while k < len(self.starts):
            start = int(self.starts[k]) + pos - int(self.ends[k])
            end = int(self.starts[k]) + int(self.ends[k + 1] - self.ends[k])
            pieces.append(self.tokens[start:end])
            pos = int(self.ends[k + 1])
            k += 1
        return np.concatenate(pieces).astype(np.int64, copy=False)
