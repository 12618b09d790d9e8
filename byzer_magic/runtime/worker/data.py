"""A worker's batches: its sequences of each step, and its share of the held-out sequences, read from
the job's token store (``runtime/token_store.py``) at the positions ``runtime/shards.py`` assigns.

Nothing is iterated to find a position: the batches of step N are computed from N, so a restarted or
resumed worker starts exactly where its checkpoint stopped.
"""
from __future__ import annotations

import numpy as np

from byzer_magic.runtime import shards
from byzer_magic.runtime.spec import JobLayout, JobSpec
from byzer_magic.runtime.token_store import TokenStore


class WorkerData:
    def __init__(self, spec: JobSpec, layout: JobLayout, rank: int):
        self.store = TokenStore.open(layout.store_dir)
        self.rank, self.layout, self.seed, self.shuffle = rank, layout, spec.training.seed, spec.data.shuffle
        self.by_partition = spec.data.keep_partition_num
        self.shape = shards.BatchShape(max_length=spec.data.max_length, workers=spec.parallel.num_workers,
                                       micro_batch=layout.micro_batch, grad_accum=layout.grad_accum)
        self.train_ids, self.eval_ids = shards.split_eval(self.store.documents, spec.eval.eval_ratio,
                                                          spec.training.seed)
        self._epoch: tuple[int, shards.EpochStream] | None = None

    def stream(self, ids: np.ndarray) -> shards.EpochStream:
        return shards.EpochStream(self.store.tokens, self.store.starts, self.store.lengths, ids,
                                  self.shape.max_length)

    def epoch(self, epoch: int) -> shards.EpochStream:
        if self._epoch is None or self._epoch[0] != epoch:
            order = shards.epoch_order(self.train_ids, epoch, self.seed, self.shuffle,
                                       self.store.parts if self.by_partition else None)
            self._epoch = (epoch, self.stream(order))
        return self._epoch[1]

    def step(self, step: int) -> list[np.ndarray]:
        """This worker's ``grad_accum`` micro-batches (each ``[micro_batch, max_length]``) for global step
        ``step`` (0-based, counted over all epochs)."""
        epoch, in_epoch = divmod(step, self.layout.steps_per_epoch)
        stream = self.epoch(epoch)
        seqs = [stream.sequence(shards.sequence_index(in_epoch, self.rank, k, self.shape, self.layout.steps_per_epoch,
                                                      self.by_partition))
                for k in range(self.shape.per_worker)]
        micro = self.shape.micro_batch
        return [np.stack(seqs[i:i + micro]) for i in range(0, len(seqs), micro)]

    def eval_batches(self) -> list[tuple[np.ndarray, float]]:
        """This worker's held-out micro-batches with their weights. Every worker gets the same number
        (padded with weight-0 repeats), since under ZeRO-3 a forward pass is a collective."""
        if not self.layout.eval_sequences or not len(self.eval_ids):
            return []
        stream = self.stream(self.eval_ids)
        seqs = [stream.sequence(j) for j in range(min(self.layout.eval_sequences, stream.size))]
        if not seqs:  # the held-out split is shorter than one sequence: evaluate what there is
            tail = stream.tail()
            seqs = [tail] if tail is not None and len(tail) > 1 else []
        if not seqs:
            return []
        micro, workers = self.shape.micro_batch, self.shape.workers
        groups = [seqs[i:i + micro] for i in range(0, len(seqs), micro)]
        per_worker = -(-len(groups) // workers)
        mine = []
        for k in range(per_worker):
            index = k * workers + self.rank
            group, weight = (groups[index], 1.0) if index < len(groups) else (groups[0], 0.0)
            mine.append((np.stack(group), weight))
        return mine
