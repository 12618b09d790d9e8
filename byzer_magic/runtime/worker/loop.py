"""The training loop each Ray Train worker runs: get batch, forward, backward, step, log, checkpoint.

``train_loop(config)`` is given to Ray Train's TorchTrainer by ``job_entry``; ``config`` is the job's
plan (see ``job_entry.plan_job``). Ray Train has set up the process group; DeepSpeed reuses it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from byzer_magic.runtime.worker import checkpoint, data, speed
from byzer_magic.runtime.network import set_nccl_socket_ifname


def _title(rank: int, name: str) -> None:
    """Name the worker ``W-<rank>-<name>`` (as Byzer named its actors) in ps/top and in log lines."""
    try:
        import ray._raylet  # noqa: PLC0415

        ray._raylet.setproctitle(f"W-{rank}-{name}")
    except Exception:  # a title is a convenience, never a reason to fail
        pass


class _Batches:
    """Micro-batches for one epoch, skipping those a restored checkpoint already trained on.

    Each worker reads its part of the job's token cache directly (``data.rank_sequences``), in an order
    that is the same on every run: a restarted or resumed worker skips exactly the micro-batches
    its checkpoint has trained on, neither repeating nor skipping a sample."""

    def __init__(self, plan: dict, rank: int, world: int, skip: int):
        sequences = data.rank_sequences(plan["tokens_dir"], rank, world, plan["train_args"]["max_length"],
                                        by_partition=plan["keep_partition_num"])
        self.it = data.micro_batches(sequences, plan["micro_batch"])
        for _ in range(skip):
            next(self.it, None)

    def take(self, n: int) -> list[np.ndarray] | None:
        out = [b for b in (next(self.it, None) for _ in range(n)) if b is not None]
        return out if len(out) == n else None


def _record_worker(plan: dict, rank: int) -> None:
    """``workers/rank-<r>.json``: where this attempt's rank runs (``JobHandle.workers()``)."""
    import socket  # noqa: PLC0415

    from byzer_magic.runtime.jobfiles import JobFiles  # noqa: PLC0415

    files = JobFiles(plan["job_dir"])
    files.workers_dir.mkdir(exist_ok=True)
    files.write_json(f"workers/rank-{rank}.json", {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
                                                   "submission_id": plan["submission_id"], "started": time.time()})


def train_loop(plan: dict) -> None:
    import deepspeed  # noqa: PLC0415
    import ray.train  # noqa: PLC0415

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    args = plan["train_args"]
    _title(rank, plan["name"])
    _record_worker(plan, rank)
    if plan["setup_nccl_socket_ifname_by_ip"]:
        set_nccl_socket_ifname()
    torch.manual_seed(args["seed"])
    from byzer_magic.runtime.models import build_training_model  # noqa: PLC0415

    model = build_training_model(plan["model_type"], model_path=plan.get("model_path"),
                                 model_config=plan.get("model_config"), get_model_file=plan.get("get_model_file"))
    if plan.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    model = speed.prepare_model(model, plan)
    if not plan["use_gpu"]:
        # Skip DeepSpeed's shared-memory all-reduce op on the CPU: its JIT build costs ~60 s and 5 GB
        # per fresh machine; gloo (Ray Train's group) does the same work.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=plan["ds_config"])
    device = engine.device
    # Flags ("do I still have data?") travel on a CPU group so that a GPU run never syncs for them.
    flag_group = dist.new_group(backend="gloo") if plan["use_gpu"] else None

    ckpt_dir = Path(plan["checkpoint_dir"])
    state = checkpoint.load_latest(engine, ckpt_dir) or {}
    step, epoch, consumed = state.get("step", 0), state.get("epoch", 0), state.get("consumed", 0)
    writer = None
    if rank == 0:
        from byzer_magic.runtime.worker.metrics import MetricsWriter  # noqa: PLC0415

        writer = MetricsWriter(plan["job_dir"], resume_step=step)
        if step:
            print(f"[W-0-{plan['name']}] resumed from {ckpt_dir / checkpoint.latest_tag(ckpt_dir)} at step {step}",
                  flush=True)
    gas, total = plan["ds_config"]["gradient_accumulation_steps"], plan["total_steps"]
    tokens_per_step = world * gas * plan["micro_batch"] * args["max_length"]
    last_save, loss_sum, t0, last_loss, since_log = step, torch.zeros((), device=device), time.time(), None, 0
    last_ids = None
    done = step >= total

    while epoch < args["epoches"] and not done:
        batches, epoch_steps = _Batches(plan, rank, world, consumed * gas), consumed
        while not (args["steps_per_epoch"] and epoch_steps >= args["steps_per_epoch"]):
            window = batches.take(gas)
            have = torch.tensor([1 if window else 0], dtype=torch.int32)
            dist.all_reduce(have, op=dist.ReduceOp.MIN, group=flag_group)
            if not have.item():
                break  # some worker ran out of data: the epoch ends for all
            for micro in window:
                ids = last_ids = _to_device(micro, device)
                loss = speed.causal_lm_loss(engine, ids)
                engine.backward(loss)
                engine.step()
                loss_sum += loss.detach() / gas
            step, epoch_steps, since_log = step + 1, epoch_steps + 1, since_log + 1
            if step % args["log_every"] == 0 or step == total:
                # The loss is read back only here: a GPU step never waits for the host otherwise.
                dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
                last_loss = loss_sum.item() / (world * since_log)
                elapsed, t0 = time.time() - t0, time.time()
                if writer:
                    writer.log(step, epoch=epoch, loss=last_loss, lr=float(engine.get_lr()[0]),
                               grad_norm=_float(engine.get_global_grad_norm()),
                               tokens_per_s=tokens_per_step * since_log / max(elapsed, 1e-9),
                               tokens=step * tokens_per_step, total_steps=total)
                    print(f"[W-0-{plan['name']}] step {step}/{total} epoch {epoch} loss {last_loss:.4f}", flush=True)
                loss_sum.zero_()
                since_log = 0
            if step - last_save >= args["checkpoint_every"]:
                checkpoint.save(engine, ckpt_dir, step, {"step": step, "epoch": epoch, "consumed": epoch_steps},
                                keep=args["keep_checkpoints"])
                last_save = step
            if step >= total:
                done = True
                break
        epoch, consumed = epoch + 1, 0

    if step != last_save or not checkpoint.latest_tag(ckpt_dir):
        checkpoint.save(engine, ckpt_dir, step, {"step": step, "epoch": epoch, "consumed": 0},
                        keep=args["keep_checkpoints"])
    if last_ids is not None:
        _record_final_eval(engine, last_ids, Path(plan["job_dir"]), rank)
    from byzer_magic.runtime.tokenizer import cached_tokenizer  # noqa: PLC0415

    out = checkpoint.export_hf(engine, engine.module, Path(plan["model_dir"]), cached_tokenizer(plan["tokenizer_path"]))
    if writer:
        writer.close()
        print(f"[W-0-{plan['name']}] finished at step {step}: checkpoints in {ckpt_dir}, model in {out}", flush=True)
    ray.train.report({"step": step, "loss": last_loss if last_loss is not None else float("nan")})


def _record_final_eval(engine, ids, job_dir: Path, rank: int) -> None:
    """The final weights' loss on the last micro-batch (rank 0's), kept with that batch: a check that
    the exported model is the trained one (it must reproduce this loss). Every rank runs the forward,
    which ZeRO-3 needs to gather its parameters."""
    engine.eval()
    with torch.no_grad():
        loss = speed.causal_lm_loss(engine, ids).float().item()
    engine.train()
    if rank == 0:
        from byzer_magic.runtime.jobfiles import JobFiles  # noqa: PLC0415

        np.save(job_dir / "final_batch.npy", ids.cpu().numpy())
        JobFiles(job_dir).write_json("final_eval.json", {"loss": loss, "batch": "final_batch.npy"})


def _to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    ids = torch.from_numpy(batch)
    return ids.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else ids.to(device)


def _float(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
