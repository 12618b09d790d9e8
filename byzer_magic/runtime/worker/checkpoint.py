"""Checkpoints that are never seen half-written, and the final Hugging Face export.

DeepSpeed writes each checkpoint under a temporary tag; once every rank has finished (a barrier),
rank 0 publishes it by renaming the folder and then replaces ``latest`` atomically. A crash at any
point leaves ``latest`` naming the previous complete checkpoint. Only complete checkpoints ever carry
the name ``global_step<N>`` (old ones are renamed away before they are deleted), so when ``latest`` is
missing or names a folder that is gone, the newest ``global_step<N>`` is the one to load. Paths must be
on storage that all workers reach (the job folder). docs/RELIABILITY.md lists the faults tested.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch.distributed as dist

LATEST = "latest"
_STEP_DIR = re.compile(r"^global_step(\d+)$")
_TMP_PREFIX = ".tmp-"   # a save in progress (or one a crash interrupted)
_DEL_PREFIX = ".del-"   # a checkpoint being deleted


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def published_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``ckpt_dir``, oldest first."""
    if not ckpt_dir.exists():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _STEP_DIR.match(p.name)))


def latest_tag(ckpt_dir: Path) -> str | None:
    """The checkpoint to load: the one ``latest`` names, else the newest complete one, else None."""
    path = ckpt_dir / LATEST
    tag = path.read_text().strip() if path.exists() else ""
    if tag and _STEP_DIR.match(tag) and (ckpt_dir / tag).is_dir():
        return tag
    steps = published_steps(ckpt_dir)
    return f"global_step{steps[-1]}" if steps else None


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


def save(engine, ckpt_dir: Path, step: int, client_state: dict, *, keep: int) -> Path:
    """Save a DeepSpeed checkpoint for ``step`` (a collective: every rank calls it)."""
    tag = f"global_step{step}"
    tmp_tag = _TMP_PREFIX + tag
    rank0 = dist.get_rank() == 0
    if rank0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(ckpt_dir)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    dist.barrier()
    if rank0:
        final = ckpt_dir / tag
        if final.exists():  # the same step saved again (a resume with other settings)
            _remove(final)
        os.replace(ckpt_dir / tmp_tag, final)
        _write_atomic(ckpt_dir / LATEST, tag)
        for old in published_steps(ckpt_dir)[:-keep]:
            if old != step:
                _remove(ckpt_dir / f"global_step{old}")
    dist.barrier()
    return ckpt_dir / tag


def load_latest(engine, ckpt_dir: Path) -> dict | None:
    """Load the newest complete checkpoint into ``engine``; its client state, or None if there is none."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    return client_state or {}


def export_hf(engine, model, out_dir: Path, tokenizer=None) -> Path | None:
    """Write a Hugging Face folder (safetensors + config + tokenizer) from the trained engine.

    Under ZeRO-3 the parameters are partitioned: gather them (a collective on every rank) first.
    Published by rename like the checkpoints. Returns the folder on rank 0, None elsewhere.
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
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    dist.barrier()
    return out_dir
