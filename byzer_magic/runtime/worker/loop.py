"""The training loop each Ray Train worker runs: get batch, forward, backward, step, log, evaluate,
checkpoint.

``train_loop({"job_dir": ...})`` is given to Ray Train's TorchTrainer by ``driver/attempts.py``; the
worker reads the job's ``JobSpec`` and the driver's ``JobLayout`` from the folder. Ray Train has set up
the process group; DeepSpeed reuses it. Every worker trains exactly ``layout.total_steps`` steps.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from byzer_magic.errors import ByzerError, DeterministicFailure
from byzer_magic.runtime import job_env
from byzer_magic.runtime.deepspeed_import import import_deepspeed
from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.spec import JobLayout, JobSpec
from byzer_magic.runtime.worker import checkpoint, speed
from byzer_magic.runtime.worker.data import WorkerData
from byzer_magic.runtime.worker.evaluate import evaluate
from byzer_magic.runtime.worker.health import record_failure
from byzer_magic.runtime.worker.step_log import StepLog


@dataclass
class TrainState:
    """What a checkpoint records beside DeepSpeed's state (its ``client_state``): where the data stands."""
    step: int = 0
    tokens_per_step: int = 0
    max_length: int = 0

    @classmethod
    def of(cls, client_state: dict | None) -> "TrainState":
        known = {k: v for k, v in (client_state or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def train_loop(config: dict) -> None:
    files = JobFiles(config["job_dir"])
    spec = JobSpec.from_json(files.read_json("job.json"))
    try:
        _train(spec, JobLayout.from_json(files.read_json("plan.json")), files)
    except DeterministicFailure as err:  # the driver reads it and does not restart (driver/attempts.py)
        import ray.train  # noqa: PLC0415

        record_failure(files.root, spec.job.submission_id, err, rank=ray.train.get_context().get_world_rank())
        raise


def _train(spec: JobSpec, layout: JobLayout, files: JobFiles) -> None:
    import ray.train  # noqa: PLC0415

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    _start_worker(spec, files, rank)
    engine = _engine(spec, layout)
    ckpt_dir = spec.checkpoint_dir
    state = TrainState.of(checkpoint.load_latest(engine, ckpt_dir))
    _check_same_batches(state, layout, spec)
    data = WorkerData(spec, layout, rank)
    log = StepLog(spec, layout, files, rank, engine, resume_step=state.step)
    if rank == 0:
        _announce(spec, layout, files, state, ckpt_dir)
    step, total, last_save = state.step, layout.total_steps, state.step
    while step < total:
        for micro in data.step(step):
            loss = speed.causal_lm_loss(engine, _to_device(micro, engine.device))
            engine.backward(loss)
            engine.step()
            log.add(loss)
        step += 1
        held_out = evaluate(engine, data.eval_batches(), engine.device) if log.eval_due(step) else None
        log.step(step, held_out)
        if step % spec.checkpoint.checkpoint_every == 0 and step < total:
            checkpoint.save(engine, ckpt_dir, step, _client_state(step, layout, spec),
                            keep=spec.checkpoint.keep_checkpoints, good=log.healthy_at(step))
            last_save = step
    if step != last_save or not checkpoint.latest_tag(ckpt_dir):
        checkpoint.save(engine, ckpt_dir, step, _client_state(step, layout, spec), keep=spec.checkpoint.keep_checkpoints,
                        good=log.healthy_at(step))
    _finish(engine, spec, layout, files, rank, data, log)
    ray.train.report({"step": step, "loss": log.last_loss if log.last_loss is not None else float("nan")})


def _announce(spec: JobSpec, layout: JobLayout, files: JobFiles, state: TrainState, ckpt_dir: Path) -> None:
    """Rank 0: where a resumed run continues from, and TensorBoard's address when the config enables it."""
    if state.step:
        print(f"[W-0-{spec.job.name}] resumed from {ckpt_dir / checkpoint.latest_tag(ckpt_dir)} at step {state.step}",
              flush=True)
    if (layout.ds_config.get("tensorboard") or {}).get("enabled"):
        from byzer_magic.runtime.tensorboard import start_for_job  # noqa: PLC0415

        start_for_job(files.root)  # its address goes into the job's log; it ends with this worker


def _start_worker(spec: JobSpec, files: JobFiles, rank: int) -> None:
    _title(rank, spec.job.name)
    _record_worker(files, spec, rank)
    handed = job_env.load_worker_secrets(files.root)  # keys the trackers and the hub need (runtime/job_env.py)
    if handed:
        print(f"[W-{rank}-{spec.job.name}] from the job's driver: {', '.join(handed)}", flush=True)
    if spec.parallel.setup_nccl_socket_ifname_by_ip:
        from byzer_magic.runtime.network import set_nccl_socket_ifname  # noqa: PLC0415

        set_nccl_socket_ifname()
    torch.manual_seed(spec.training.seed)


def _engine(spec: JobSpec, layout: JobLayout):
    """The DeepSpeed engine around the job's model, built and prepared for this worker's device."""
    deepspeed = import_deepspeed()

    from byzer_magic.runtime.models import build_training_model  # noqa: PLC0415

    m, device, dtype = spec.model, None, None
    if layout.use_gpu:  # made on the GPU in its training dtype: no fp32 copy on the host (issue 13)
        import ray.train.torch  # noqa: PLC0415

        device = ray.train.torch.get_device()
        dtype = (torch.bfloat16 if (layout.ds_config.get("bf16") or {}).get("enabled") is True else
                 torch.float16 if (layout.ds_config.get("fp16") or {}).get("enabled") is True else None)
    model = build_training_model(m.model_type, model_path=m.model_path, model_config=m.model_config,
                                 get_model_file=m.get_model_file, device=device, dtype=dtype)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    zero_stage = int((layout.ds_config.get("zero_optimization") or {}).get("stage", 0) or 0)
    model = speed.prepare_model(model, use_gpu=layout.use_gpu, zero_stage=zero_stage)
    if not layout.use_gpu:
        # Skip DeepSpeed's shared-memory all-reduce op on the CPU: its JIT build costs ~60 s and 5 GB
        # per fresh machine; gloo (Ray Train's group) does the same work.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=layout.ds_config)
    return engine


def _check_same_batches(state: TrainState, layout: JobLayout, spec: JobSpec) -> None:
    """A checkpoint taken with another batch shape would repeat or skip data: refuse, saying what changed
    (``kernel/resume.py`` refuses it before submitting; this guards the Python API and old folders)."""
    if state.step and state.tokens_per_step and (state.tokens_per_step, state.max_length) != \
            (layout.tokens_per_step, spec.data.max_length):
        raise ByzerError(f"the checkpoint at step {state.step} was trained with {state.tokens_per_step:,} tokens per "
                         f"step of max_length {state.max_length}; this run has {layout.tokens_per_step:,} of "
                         f"{spec.data.max_length}: the data position cannot be carried over")


def _client_state(step: int, layout: JobLayout, spec: JobSpec) -> dict:
    return asdict(TrainState(step=step, tokens_per_step=layout.tokens_per_step, max_length=spec.data.max_length))


def _finish(engine, spec: JobSpec, layout: JobLayout, files: JobFiles, rank: int, data: WorkerData, log: StepLog):
    """The exported model, and a check that it is the trained one (``final_eval.json``)."""
    from byzer_magic.runtime.tokenizer import cached_tokenizer  # noqa: PLC0415

    _record_final_eval(engine, _to_device(data.step(max(0, layout.total_steps - 1))[-1], engine.device),
                       files.root, rank)
    out = checkpoint.export_hf(engine, engine.module, Path(layout.model_dir), cached_tokenizer(spec.model.tokenizer_path))
    log.close()
    if rank == 0:
        print(f"[W-0-{spec.job.name}] finished at step {layout.total_steps}: checkpoints in {spec.checkpoint_dir}, "
              f"model in {out}", flush=True)


def _record_final_eval(engine, ids: torch.Tensor, job_dir: Path, rank: int) -> None:
    """The final weights' loss on the last micro-batch (rank 0's), kept with that batch: the exported
    model must reproduce this loss. Every rank runs the forward, which ZeRO-3 needs."""
    engine.eval()
    with torch.no_grad():
        loss = speed.causal_lm_loss(engine, ids).float().item()
    engine.train()
    if rank == 0:
        np.save(job_dir / "final_batch.npy", ids.cpu().numpy())
        JobFiles(job_dir).write_json("final_eval.json", {"loss": loss, "batch": "final_batch.npy"})
    dist.barrier()


def _title(rank: int, name: str) -> None:
    """Name the worker ``W-<rank>-<name>`` (as Byzer named its actors) in ps/top and in log lines."""
    try:
        import ray._raylet  # noqa: PLC0415

        ray._raylet.setproctitle(f"W-{rank}-{name}")
    except Exception:  # a title is a convenience, never a reason to fail
        pass


def _record_worker(files: JobFiles, spec: JobSpec, rank: int) -> None:
    """``workers/rank-<r>.json``: where this attempt's rank runs (``JobHandle.workers()``)."""
    import socket  # noqa: PLC0415

    files.workers_dir.mkdir(exist_ok=True)
    files.write_json(f"workers/rank-{rank}.json", {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
                                                   "submission_id": spec.job.submission_id, "started": time.time()})


def _to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    ids = torch.from_numpy(batch)
    return ids.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else ids.to(device)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
