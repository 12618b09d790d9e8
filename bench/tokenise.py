"""Tokenising benchmark (issue 12 item 5): a generated corpus tokenised through the job's own path, against
the raw tokenizer's rate on the same cores, and the peak memory.

    flock /tmp/byzer-ray.lock .venv/bin/python bench/tokenise.py [--size-mb 1024] [--raw-sample-mb 100]

The corpus: the Python standard library's sources, shuffled and repeated into a few hundred files of
varied sizes (10 kB - 10 MB, plus files of 200, 100 and 50 MB where they fit in half of ``--size-mb``), in a
temporary folder under /tmp that is deleted at the end. Our path is the driver's: ``tables.load_text(dir,
wholetext=True)`` renamed to ``text`` (driver/inputs.py's localDataDir) into ``driver/tokenise.build_store``
on the embedded Ray head. The raw rate: the same SentencePiece model (tests/support/tiny.py) encoding the
same files in 16 kB line-aligned pieces (its fastest: runtime/long_documents.py) in a multiprocessing
pool of one process per core, on a sample of
``--raw-sample-mb``, measured before and after our path (this machine's speed drifts by +-10-20%
between minutes): the ratio is against their mean. Memory: RSS of this process (the driver's role) and the sum over the head's Ray worker
processes, sampled with psutil every second. From Ray's task events: when the tokenising tasks ran and
the core-seconds outside them. Writes bench/results/tokenise.json; docs/BENCHMARKS.md shows it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MB = 1 << 20


def make_corpus(out: Path, size_mb: int, seed: int = 0) -> list[int]:
    """Write ``size_mb`` of shuffled standard-library source into files of varied sizes; their sizes."""
    stdlib = Path(json.__file__).parent.parent
    sources = [p.read_bytes() for p in sorted(stdlib.rglob("*.py")) if "site-packages" not in p.parts]
    sources = [s for s in sources if s.strip() and _is_utf8(s)]  # a few test files are Latin-1
    rng = random.Random(seed)
    total = size_mb * MB
    sizes = [b * MB for b in (200, 100, 50) if b * MB <= total // 2] or [total // 2]  # a small run: one half
    left = total - sum(sizes)
    while left > 0:
        size = min(left, int(10 ** rng.uniform(4, 7)))  # 10 kB - 10 MB, log-uniform
        sizes.append(size)
        left -= size
    rng.shuffle(sizes)
    for i, size in enumerate(sizes):
        with open(out / f"doc-{i:04d}.py", "wb") as f:
            written = 0
            while written < size:
                chunk = rng.choice(sources)
                if len(chunk) > size - written:  # cut at a line end: never inside a character
                    cut = chunk.rfind(b"\n", 0, size - written) + 1
                    chunk = chunk[:cut] if cut else b"\n" * (size - written)
                f.write(chunk)
                written += len(chunk)
    return sizes


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _pieces(paths: list[Path], budget: int, piece: int = 1 << 14):
    """Line-aligned pieces of about ``piece`` bytes of the files, up to ``budget`` bytes in all."""
    taken = 0
    for path in paths:
        data = path.read_bytes()
        start = 0
        while start < len(data) and taken < budget:
            end = data.find(b"\n", start + piece)
            end = len(data) if end < 0 else end + 1
            yield data[start:end]
            taken += end - start
            start = end
        if taken >= budget:
            return


_sp = None


def _init(model: str) -> None:
    global _sp
    import sentencepiece as spm

    _sp = spm.SentencePieceProcessor(model_file=model)


def _encode(data: bytes) -> tuple[int, int]:
    return len(_sp.encode(data.decode("utf-8"), out_type=int)), len(data)


def raw_rate(paths: list[Path], model: str, sample: int, procs: int) -> dict:
    t0 = time.time()
    with multiprocessing.get_context("spawn").Pool(procs, initializer=_init, initargs=(model,)) as pool:
        t1 = time.time()
        tokens, read = 0, 0
        for n, size in pool.imap_unordered(_encode, _pieces(paths, sample), chunksize=4):
            tokens, read = tokens + n, read + size
        seconds = time.time() - t1
    return {"bytes": read, "tokens": tokens, "seconds": round(seconds, 1), "pool_start_s": round(t1 - t0, 1),
            "tokens_per_s": round(tokens / seconds), "bytes_per_token": round(read / tokens, 3)}


class MemorySampler(threading.Thread):
    """Peak RSS of this process and of the sum over the embedded head's Ray worker processes."""

    def __init__(self, every: float = 1.0):
        super().__init__(daemon=True)
        self.every, self.stop, self.driver, self.workers = every, threading.Event(), 0, 0

    def run(self) -> None:
        import psutil

        from byzer_magic.runtime import cluster

        me = psutil.Process()
        while not self.stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            total = 0
            for proc in cluster.head_processes():
                try:
                    cmd = " ".join(proc.cmdline())
                    if "default_worker.py" in cmd or proc.name().startswith("ray::"):
                        total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.workers = max(self.workers, total)
            self.stop.wait(self.every)


def task_timeline(dashboard: str, began: float, seconds: float, cores: int) -> dict:
    """Where our path's core-seconds went, from Ray's task events: the tokenising tasks' count, when the
    first started and the last ended (seconds into the path), their busy core-seconds, and what the cores
    spent outside them (start, the tail, the driver's joins)."""
    from ray.util.state import list_tasks

    time.sleep(3)  # task events reach the GCS about a second after the task ends
    tasks = [t for t in list_tasks(address=dashboard, detail=True, limit=10_000, raise_on_missing_output=False)
             if "write_piece" in t.name and t.start_time_ms and t.end_time_ms]
    if not tasks:
        return {}
    starts = sorted(t.start_time_ms / 1000 - began for t in tasks)
    ends = sorted(t.end_time_ms / 1000 - began for t in tasks)
    busy = sum(t.end_time_ms - t.start_time_ms for t in tasks) / 1000
    return {"count": len(tasks), "first_start_s": round(starts[0], 1),
            "second_start_s": round(starts[min(1, len(starts) - 1)], 1), "last_end_s": round(ends[-1], 1),
            "next_to_last_end_s": round(ends[max(len(ends) - 2, 0)], 1), "busy_core_s": round(busy, 1),
            "idle_core_s": round(cores * seconds - busy, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--raw-sample-mb", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bm-tokenise-", dir="/tmp"))
    os.environ["BYZER_MAGIC_HOME"] = str(work / "home")
    try:
        run(work, args)
    finally:
        from byzer_magic.runtime import cluster

        cluster.stop_local_head()
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args) -> None:
    from tests.support.tiny import train_sentencepiece

    model = str(train_sentencepiece(work / "tok"))
    corpus = work / "corpus"
    corpus.mkdir()
    t0 = time.time()
    sizes = make_corpus(corpus, args.size_mb)
    generate_s = time.time() - t0
    paths = sorted(corpus.iterdir())
    procs = os.cpu_count() or 1
    load0 = os.getloadavg()[0]
    raw = raw_rate(paths, model, args.raw_sample_mb * MB, procs)
    print("raw before:", raw, flush=True)

    from byzer_magic.runtime import cluster, token_store
    from byzer_magic.runtime.driver.tokenise import build_store
    from byzer_magic.runtime.tables import load_text

    t1 = time.time()
    dashboard = cluster.connect().dashboard_url
    head_s = time.time() - t1
    sampler = MemorySampler()
    sampler.start()
    store = work / "store"
    t2 = time.time()
    build_store(lambda: load_text(str(corpus), wholetext=True).rename_columns({"value": "text"}), store,
                tokenizer_path=model, text_column="text", by_partition=False)
    path_s = time.time() - t2
    sampler.stop.set()
    sampler.join()
    timeline = task_timeline(dashboard, t2, path_s, procs)
    print("tasks:", timeline, flush=True)
    tokens = int(token_store.TokenStore.open(store).offsets[-1])
    ours = round(tokens / path_s)
    cluster.stop_local_head()  # the raw rate again, as idle as before: this machine's speed drifts
    after = raw_rate(paths, model, args.raw_sample_mb * MB, procs)
    print("raw after:", after, flush=True)
    raw_mean = round((raw["tokens_per_s"] + after["tokens_per_s"]) / 2)
    out = {
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, load average {load0:.1f} before, "
                   f"{os.getloadavg()[0]:.1f} after",
        "tokenizer": "SentencePiece BPE, vocab 512 (tests/support/tiny.py train_sentencepiece)",
        "corpus": {"bytes": sum(sizes), "files": len(sizes), "largest_mb": round(max(sizes) / MB, 1),
                   "files_over_50mb": sum(s >= 50 * MB for s in sizes), "generate_s": round(generate_s, 1)},
        "raw_tokenizer": {"before": raw, "after": after, "tokens_per_s": raw_mean, "processes": procs},
        "ours": {"tokens": tokens, "seconds": round(path_s, 1), "tokens_per_s": ours,
                 "head_start_s": round(head_s, 1), "tasks": timeline},
        "ratio": round(ours / raw_mean, 3),
        "goal_ratio": 0.9,
        "peak_rss_mb": {"driver": round(sampler.driver / MB), "ray_workers_sum": round(sampler.workers / MB)},
        "command": "python bench/tokenise.py " + " ".join(sys.argv[1:]),
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "tokenise.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
