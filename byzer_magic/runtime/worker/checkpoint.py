"""Checkpoints that are never seen half-written, verified before they are trusted, and the final
Hugging Face export.

A save (a collective: every rank calls ``save``): DeepSpeed writes the checkpoint under a temporary tag
``.tmp-global_step<N>``; every rank then reads back its share of the files (``i % world == rank``),
fsyncs them and records their sizes and CRC-32s (zlib's: ~2.7 GB/s, the files are large); rank 0 writes
``manifest.json`` last, fsyncs the folders, publishes the folder by rename, fsyncs the parent, and
replaces ``latest`` atomically. A crash at any point leaves ``latest`` naming the previous complete
checkpoint, and only complete checkpoints carry the name ``global_step<N>``.

A checkpoint is *intact* when its manifest is there and every file it lists has its size (and, for a
load, its checksum). ``latest_tag``/``load_latest`` take the one ``latest`` names if intact, else the
newest intact one, and say so in a printed line (the job's log). Pruning keeps the newest
``keep_checkpoints`` and never deletes the newest intact checkpoint nor the newest one saved ``good``
(its loss was checked finite, worker/health.py), so a run that goes NaN keeps a checkpoint to go back to.

A save that fails (disk full, permissions, I/O) raises ``CheckpointWriteError`` on every rank: a
deterministic failure, named with the previous checkpoint, which is intact. Paths must be on storage
that all workers reach (the job folder). docs/RELIABILITY.md lists the faults tested.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from byzer_magic.errors import CheckpointWriteError

LATEST = "latest"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^global_step(\d+)$")
_TMP_PREFIX = ".tmp-"   # a save in progress (or one a crash interrupted)
_DEL_PREFIX = ".del-"   # a checkpoint being deleted
_CHUNK = 16 << 20
_DISK_FULL_MARGIN = 16 << 20  # a write error with less free space than this is a full disk


# -- files -------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def file_digest(path: Path, *, fsync: bool = False) -> dict:
    """``{"size", "crc32"}`` of a file, read in 16 MiB chunks (fsynced first when asked)."""
    crc = 0
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
        size = f.tell()
    return {"size": size, "crc32": f"{crc:08x}"}


def _files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def check_intact(folder: Path, *, deep: bool = False, files: list[str] | None = None) -> str | None:
    """None when ``folder`` is an intact checkpoint, else what is wrong (one phrase). ``deep``: compare
    checksums too (reads every file, or only ``files``); else sizes only."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = manifest["files"]
    except FileNotFoundError:
        return "it has no manifest (an unfinished or foreign save)" if folder.is_dir() else "it is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    if not listed:
        return "its manifest lists no files"
    for name, want in listed.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want["size"]:
            return f"{name} is {size} bytes, {want['size']} expected"
        if deep and (files is None or name in files) and file_digest(path)["crc32"] != want["crc32"]:
            return f"{name} does not match its checksum"
    return None


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def published_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the published (renamed) checkpoints in ``ckpt_dir``, oldest first; see ``intact_steps``."""
    if not ckpt_dir.exists():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _STEP_DIR.match(p.name)))


def intact_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the published checkpoints whose files all have the manifest's sizes, oldest first."""
    return [s for s in published_steps(ckpt_dir) if check_intact(ckpt_dir / f"global_step{s}") is None]


def _candidates(ckpt_dir: Path) -> list[str]:
    """The tag ``latest`` names first, then every published one, newest first."""
    path = ckpt_dir / LATEST
    try:
        named = path.read_text().strip()
    except OSError:
        named = ""
    tags = [f"global_step{s}" for s in reversed(published_steps(ckpt_dir))]
    if _STEP_DIR.match(named) and named in tags:
        tags.remove(named)
        tags.insert(0, named)
    return tags


def latest_tag(ckpt_dir: Path, *, say: Callable[[str], None] | None = None) -> str | None:
    """The checkpoint to load: the one ``latest`` names if intact (sizes), else the newest intact one,
    else None. ``say`` gets a line for each damaged checkpoint passed over."""
    for tag in _candidates(ckpt_dir):
        problem = check_intact(ckpt_dir / tag)
        if problem is None:
            return tag
        if say:
            say(f"checkpoint {tag} in {ckpt_dir} is damaged ({problem}): passing over it")
    return None


# -- collectives -------------------------------------------------------------------------------------
def _all_true(ok: bool, group=None) -> bool:
    """True on every rank when ``ok`` is true on every rank."""
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(flag.item())


def _gather(value, group=None) -> list:
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, value, group=group)
    return out


def _broadcast(value, group=None):
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


# -- saving ------------------------------------------------------------------------------------------
def _remove(path: Path) -> None:
    """Delete a checkpoint folder: renamed first, so that a crash half-way never leaves a partial
    folder under a ``global_step<N>`` name."""
    doomed = path.with_name(_DEL_PREFIX + path.name)
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(ckpt_dir: Path) -> None:
    """Folders of saves and deletions, and ``latest`` files, that a crash interrupted."""
    for path in ckpt_dir.iterdir():
        if path.name.startswith((_TMP_PREFIX, _DEL_PREFIX)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(f".{LATEST}.tmp-"):
            path.unlink(missing_ok=True)


def _check_space(ckpt_dir: Path) -> None:
    """ENOSPC before anything is written when the disk has less room than the previous checkpoint
    took: a save that fails part-way on one rank would leave the others waiting in DeepSpeed's barrier."""
    previous = latest_tag(ckpt_dir)
    need = (read_manifest(ckpt_dir / previous) or {}).get("bytes") if previous else None
    free = shutil.disk_usage(ckpt_dir).free
    if need and free < need:
        raise OSError(errno.ENOSPC, f"it needs about {_size(need)}, {_size(free)} free")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _write_failure(ckpt_dir: Path, tag: str, err: BaseException) -> str:
    """The one-line reason of a failed save, naming the checkpoint that remains."""
    previous = latest_tag(ckpt_dir)
    kept = (f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint")
    code = getattr(err, "errno", None)
    try:
        free = shutil.disk_usage(ckpt_dir).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and free is not None and free < _DISK_FULL_MARGIN):
        detail = getattr(err, "strerror", "") or ""
        detail = f" ({detail})" if detail.startswith("it needs") else ""
        return f"disk full writing checkpoint {tag} in {ckpt_dir}{detail}; {kept}"
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:200]
    return f"could not write checkpoint {tag} in {ckpt_dir} ({type(err).__name__}: {reason}); {kept}"


def save(engine, ckpt_dir: Path, step: int, client_state: dict, *, keep: int, good: bool = False,
         group=None) -> Path:
    """Save, verify and publish a DeepSpeed checkpoint for ``step`` (a collective: every rank calls it).

    ``good``: the loss logged at this step was checked finite (``LossGuard.healthy_at(step)``); the
    newest good checkpoint is never pruned. ``group``: the process group for our own collectives (a gloo
    group on GPUs keeps them off NCCL; default: the world). Raises ``CheckpointWriteError`` on every rank
    when any rank could not write."""
    tag, rank = f"global_step{step}", dist.get_rank(group)
    tmp = ckpt_dir / (_TMP_PREFIX + tag)
    error = None
    if rank == 0:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(ckpt_dir)
            _check_space(ckpt_dir)
        except OSError as err:
            error = err
    if _all_true(error is None, group):
        try:
            engine.save_checkpoint(str(ckpt_dir), tag=tmp.name, client_state=client_state, save_latest=False)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            error = err
    entries: dict = {}
    if _all_true(error is None, group):
        try:  # each rank reads back, fsyncs and checksums its share of the files
            world = dist.get_world_size(group)
            names = _files_of(tmp) if rank == 0 else None
            names = _broadcast(names, group)
            entries = {n: file_digest(tmp / n, fsync=True) for i, n in enumerate(names) if i % world == rank}
        except OSError as err:
            error = err
    gathered = _gather(entries if error is None else None, group)
    failed = error is not None or any(part is None for part in gathered)
    if not failed and rank == 0:
        try:
            files = {k: v for part in gathered for k, v in part.items()}
            manifest = {"version": 1, "tag": tag, "step": step, "good": bool(good), "saved_at": time.time(),
                        "bytes": sum(v["size"] for v in files.values()), "files": files}
            _write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))
            for folder in sorted({(tmp / n).parent for n in files}, key=lambda p: -len(p.parts)):
                _fsync_dir(folder)
            # `latest` is written (and fsynced) before the folder is published: renames need no space.
            latest_tmp = ckpt_dir / f".{LATEST}.tmp-{os.getpid()}"
            with open(latest_tmp, "w") as f:
                f.write(tag)
                f.flush()
                os.fsync(f.fileno())
            final = ckpt_dir / tag
            if final.exists():  # the same step saved again (a resume with other settings)
                _remove(final)
            os.replace(tmp, final)
            os.replace(latest_tmp, ckpt_dir / LATEST)
            _fsync_dir(ckpt_dir)
            _prune(ckpt_dir, keep=keep, saved=step)
        except OSError as err:
            error = err
    if not _all_true(error is None and not failed, group):
        message = _write_failure(ckpt_dir, tag, error) if error is not None else None
        messages = [m for m in _gather(message, group) if m]
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
            for stray in ckpt_dir.glob(f".{LATEST}.tmp-*"):
                stray.unlink(missing_ok=True)
        raise CheckpointWriteError(messages[0] if messages else f"could not write checkpoint {tag} in {ckpt_dir}")
    return ckpt_dir / tag


def _prune(ckpt_dir: Path, *, keep: int, saved: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, sparing the one just saved, the newest intact one
    and the newest one saved ``good``."""
    steps = published_steps(ckpt_dir)
    spare = {saved, *steps[-keep:]}
    intact = [s for s in steps if check_intact(ckpt_dir / f"global_step{s}") is None]
    if intact:
        spare.add(intact[-1])
    good = [s for s in intact if (read_manifest(ckpt_dir / f"global_step{s}") or {}).get("good")]
    if good:
        spare.add(good[-1])
    for old in steps:
        if old not in spare:
            _remove(ckpt_dir / f"global_step{old}")


# -- loading -----------------------------------------------------------------------------------------
def load_latest(engine, ckpt_dir: Path, *, group=None, say: Callable[[str], None] = print) -> dict | None:
    """Load the newest intact checkpoint into ``engine`` (a collective); its client state, or None if
    there is none. See ``load_newest_intact``."""
    return load_newest_intact(engine, ckpt_dir, group=group, say=say)[1]


def load_newest_intact(engine, ckpt_dir: Path, *, group=None,
                       say: Callable[[str], None] = print) -> tuple[str | None, dict | None]:
    """``(tag, client state)`` of the checkpoint loaded into ``engine`` (a collective), ``(None, None)`` if
    there is none. Every rank verifies the checksums of its share of the files; a damaged checkpoint is
    passed over, and rank 0 says which one was loaded instead."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    tags = _broadcast(_candidates(ckpt_dir) if rank == 0 else None, group)
    passed = []
    for tag in tags:
        folder = ckpt_dir / tag
        listed = sorted((read_manifest(folder) or {}).get("files", {}))
        mine = [n for i, n in enumerate(listed) if i % world == rank]
        problem = check_intact(folder, deep=True, files=mine)
        problems = _gather(problem, group)
        if all(p is None for p in problems):
            if passed and rank == 0:
                say(f"checkpoint {passed[0][0]} in {ckpt_dir} is damaged ({passed[0][1]}): resuming from "
                    f"{tag}, the newest intact checkpoint")
            _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
            return tag, client_state or {}
        passed.append((tag, next(p for p in problems if p)))
    if passed and rank == 0:
        say(f"no intact checkpoint in {ckpt_dir} ({passed[0][0]}: {passed[0][1]}): starting from step 0")
    return None, None


def export_hf(engine, model, out_dir: Path, tokenizer=None) -> Path | None:
    """Write a Hugging Face folder (safetensors + config + tokenizer) from the trained engine.

    Under ZeRO-3 the parameters are partitioned: gather them (a collective on every rank) first.
    Fsynced and published by rename like the checkpoints. Returns the folder on rank 0, None elsewhere.
    """
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0
    state_dict = engine._zero3_consolidated_16bit_state_dict() if stage == 3 else None
    if dist.get_rank() != 0:
        dist.barrier()
        return None
    if state_dict is None:
        state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save(str(tmp))
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    _fsync_dir(out_dir.parent)
    dist.barrier()
    return out_dir
