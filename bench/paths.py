"""The training paths bench/h200.py compares, one per process: each builds the same Llama, trains it on
random tokens and returns tokens/s measured after its warm-up steps.

Run by bench/h200.py as ``python bench/paths.py <path> <settings.json>``; the last line printed is
``RESULT {json}``. Paths: ``torch_eager``, ``torch_compile``, ``deepspeed_zero2_eager``,
``deepspeed_zero2_ray_actor`` (anchors) and ``byzer_magic`` (ours: a Ray Job through DeepSpeedTrain).
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Ray swaps 127.0.0.1 for the machine's outward address (for its GCS, raylet, and the address a driver
# dials), which the lent GPU machine could not connect to itself on: its first run hung there. One-node
# clusters stay on loopback; Ray reads this when it is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ADAMW = {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}


# -- shared --------------------------------------------------------------------------------------------

def build_llama(s: dict, device: str):
    from byzer_magic.runtime.models import registry  # noqa: PLC0415

    torch.manual_seed(0)
    with torch.device(device):
        return registry.build_model("sfft/llama2", s["model"])


def random_batches(s: dict, device: str, count: int = 8):
    g = torch.Generator().manual_seed(1)
    pool = torch.randint(0, s["model"]["vocab_size"], (count, s["micro"], s["seq"]), generator=g)
    return [b.to(device) for b in pool]


def timed(fwd, bwd, opt, s: dict, device: str) -> dict:
    """Train ``warmup`` then ``steps`` optimizer steps of ``gas`` micro-steps each (``fwd(ids)`` -> loss,
    ``bwd(loss)``, ``opt()`` after every micro-step for DeepSpeed, after the last one otherwise); tokens/s
    over the measured steps. Then a few more steps with the device synchronised between phases give
    each phase's time (``phase_ms``: forward, backward, optimizer/engine step)."""
    batches = random_batches(s, device)
    gpu = device == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def step(i, phases=None, gas=None):
        gas = gas or s["gas"]
        for k in range(gas):
            ids = batches[(i * gas + k) % len(batches)]
            marks = [time.perf_counter()]
            loss = fwd(ids)
            if phases is not None:
                sync()
                marks.append(time.perf_counter())
            bwd(loss)
            if phases is not None:
                sync()
                marks.append(time.perf_counter())
            if opt.per_micro_step or k == gas - 1:
                opt()
            if phases is not None:
                sync()
                marks.append(time.perf_counter())
                for name, a, b in zip(("forward", "backward", "step"), marks, marks[1:]):
                    phases.setdefault(name, []).append(1e3 * (b - a))

    for i in range(s["warmup"]):
        step(i)
    sync()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(s["steps"]):
        step(s["warmup"] + i)
    sync()
    seconds = time.perf_counter() - start
    phases = {}
    if s["gas"] > 3:  # one window of 3 micro-steps (the optimizer's step on the last) keeps this short
        step(0, phases, gas=3)
        phases["step"] = phases["step"][-1:]
    else:
        for i in range(3):
            step(i, phases)
    tokens = s["steps"] * s["gas"] * s["micro"] * s["seq"]
    out = {"tokens_per_s": tokens / seconds, "measured_steps": s["steps"], "seconds": seconds,
           "phase_ms_per_micro_step": {k: round(statistics.median(v), 2) for k, v in phases.items()}}
    if gpu:
        out["torch_peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


class Step:
    """The optimizer step of a loop; ``per_micro_step``: DeepSpeed's engine.step() runs every micro-step."""

    def __init__(self, fn, per_micro_step: bool):
        self.fn, self.per_micro_step = fn, per_micro_step

    def __call__(self):
        self.fn()


def job_chooses_batch() -> bool:
    """Whether the job picks micro-batch and accumulation itself when none are set (batch_defaults)."""
    root = ROOT / "byzer_magic" / "runtime"
    return any("choose_batch" in f.read_text() for f in root.rglob("*.py") if f.name != "batch_defaults.py")


def ds_config(s: dict, *, ours: bool) -> dict:
    """The seed's DeepSpeed config (DEFAULT_CONFIG: ZeRO-2, bf16, AdamW, cosine lr, clipping 1.0) with
    ``micro``/``gas``. AdamW is torch's fused one in every path here (DeepSpeed's FusedAdam would be a
    JIT build per fresh machine; both are one multi-tensor kernel). ``ours`` adds the GPU defaults
    proposed in docs/PERF_NOTES.md (no synchronising throughput timer) and ``s["ds_extra"]``."""
    from byzer_magic.runtime.config import resolve_ds_config  # noqa: PLC0415

    user = {"train_micro_batch_size_per_gpu": s["micro"], "gradient_accumulation_steps": s["gas"],
            "optimizer": {"type": "AdamW", "params": {**ADAMW, "torch_adam": True,
                                                      **({"fused": True} if s["gpu"] else {})}}}
    if ours:
        user["timers"] = {"throughput": {"enabled": False}}
        user.update(s.get("ds_extra") or {})
    cfg, _ = resolve_ds_config(user, on_gpu=s["gpu"], total_steps=s["warmup"] + s["steps"] + 2)
    return cfg


def job_ds_config(s: dict) -> dict:
    """The deepspeedConfig a notebook user would write for this path: our GPU settings and ``ds_extra``;
    no micro-batch or accumulation when the path measures our defaults and the job chooses them."""
    user = {"train_micro_batch_size_per_gpu": s["micro"], "gradient_accumulation_steps": s["gas"],
            **(s.get("ds_extra") or {})}
    if s.get("defaults") and job_chooses_batch():
        del user["train_micro_batch_size_per_gpu"], user["gradient_accumulation_steps"]
    return user


# -- bare PyTorch ----------------------------------------------------------------------------------------

def torch_loop(s: dict, *, compile_model: bool) -> dict:
    """fp32 master weights, bf16 autocast (the same numerics as DeepSpeed's bf16 mode), fused AdamW,
    clipping at 1.0, HF's own SDPA attention and loss; ``compile_model``: every decoder layer compiled."""
    device = "cuda" if s["gpu"] else "cpu"
    model = build_llama(s, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), **ADAMW, fused=s["gpu"])
    if compile_model:  # regional: each decoder layer (one graph, reused), as compile-time guides advise
        for layer in model.model.layers:
            layer.compile(backend="inductor" if s["gpu"] else "eager", dynamic=False)
    run = model

    def fwd(ids):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=s["gpu"]):
            return run(input_ids=ids, labels=ids, use_cache=False).loss

    def opt_step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(fwd, lambda loss: (loss / s["gas"]).backward(), Step(opt_step, False), s, device)


# -- DeepSpeed -------------------------------------------------------------------------------------------

def deepspeed_loop(s: dict, *, fast: bool = False) -> dict:
    """Plain DeepSpeed ZeRO-2 on the eager transformers model (the seed's stack), one process.
    ``fast``: with speed.py's GPU path and our DeepSpeed settings (our path without Ray and data)."""
    import deepspeed  # noqa: PLC0415

    from byzer_magic.runtime.worker import speed  # noqa: PLC0415

    if not torch.distributed.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
        if not s["gpu"]:
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if s["gpu"] else "gloo")
    device = "cuda" if s["gpu"] else "cpu"
    model = build_llama(s, "cpu")
    cfg = ds_config(s, ours=fast)
    if fast:
        model = speed.prepare_model(model, use_gpu=True, zero_stage=int(cfg["zero_optimization"]["stage"]))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    return timed(lambda ids: speed.causal_lm_loss(engine, ids), engine.backward, Step(engine.step, True), s, device)


def deepspeed_in_ray_actor(s: dict) -> dict:
    """The same loop inside a Ray actor that holds the GPU (a local Ray instance of its own)."""
    import ray  # noqa: PLC0415

    # Workers inherit this process's environment: make the repository importable there.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=4, num_gpus=1 if s["gpu"] else 0, include_dashboard=False,
             logging_level="ERROR", log_to_driver=True)
    try:
        actor = ray.remote(num_gpus=1 if s["gpu"] else 0, num_cpus=1)(RayTrainer).remote()
        return ray.get(actor.run.remote(s))
    finally:
        ray.shutdown()


class RayTrainer:
    """The actor: it imports this file as the module ``bench.paths`` (by name, so that Ray pickles a
    reference to the class rather than the functions of a ``__main__`` module)."""

    def run(self, settings: dict) -> dict:
        import importlib  # noqa: PLC0415

        return importlib.import_module("bench.paths").deepspeed_loop(settings)


# -- ours ------------------------------------------------------------------------------------------------

def write_tokenizer(folder: Path, vocab_size: int) -> Path:
    """A word-level tokenizer.json with exactly ``vocab_size`` ids: w3 ... w<V-1> plus <unk>, <s>, </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>",
                                                              "unk_token": "<unk>"}))
    return folder


def write_text(folder: Path, tokens: int, vocab_size: int, files: int = 64) -> Path:
    """Random words (uniform over the vocabulary), ``tokens`` of them in ``files`` documents."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = tokens // files + 1
    for i in range(files):
        words = rng.integers(3, vocab_size, per_file)
        (folder / f"doc{i:03d}.txt").write_text(" ".join(f"w{w}" for w in words))
    return folder


def byzer_magic(s: dict) -> dict:
    """Our full path: embedded Ray head, DeepSpeedTrain.submit() -> Ray Job -> job_entry -> TorchTrainer
    -> trainer.train_loop (speed.py's GPU path). tokens/s is the trainer's own metric (metrics.jsonl),
    the median over the steps after the warm-up; the job is stopped once those are logged, so its
    final checkpoint and export (minutes for a 7B model) stay out of the device time."""
    name = s.get("name", "byzer_magic")
    work = Path(s.get("work_dir", "/tmp/bmbench")) / name
    os.environ["BYZER_MAGIC_HOME"] = str(work / "home")
    os.environ.update(s.get("env") or {})  # the Ray head, and so the job's workers, inherit these
    from byzer_magic.runtime import cluster  # noqa: PLC0415
    from byzer_magic.runtime.config import ParallelConfig, TrainArgs  # noqa: PLC0415
    from byzer_magic.runtime.kernel.submit import DeepSpeedTrain  # noqa: PLC0415

    total = s["warmup"] + s["steps"]
    vocab = s["model"]["vocab_size"]
    tok_dir = write_tokenizer(work / "tokenizer", vocab)
    data_dir = write_text(work / "text", int(1.1 * (total + 2) * s["gas"] * s["micro"] * s["seq"]), vocab)
    started = time.time()
    cluster.connect()
    config = ParallelConfig(
        num_workers=1, use_gpu=s["gpu"], model_type="sfft/llama2", model_config=s["model"], name=name,
        local_path_prefix=str(work / "jobs"), ds_config=job_ds_config(s),
        gradient_checkpointing=bool(s.get("gradient_checkpointing")),
        train_args=TrainArgs(tokenizer_path=str(tok_dir), data_dir=str(data_dir), steps_per_epoch=total + 2,
                             max_length=s["seq"], log_every=1, checkpoint_every=10**6,
                             eval_ratio=0.0))  # no held-out evaluation inside the timed steps
    submitted = time.time()
    handle = DeepSpeedTrain(config).submit()
    try:
        while True:
            metrics = handle.metrics()
            status = handle.status()
            if len(metrics) >= total or status not in ("PENDING", "RUNNING"):
                break
            time.sleep(2)
        first_step_at = submit_to_first = None
        if len(metrics):
            first_step_at = float(metrics.iloc[0]["time"]) - started
            submit_to_first = float(metrics.iloc[0]["time"]) - submitted
        if len(metrics) < total:
            raise RuntimeError(f"job {status} after {len(metrics)} of {total} steps:\n{handle.logs(tail=60)}")
    finally:
        handle.stop(timeout=60)
        cluster.stop_local_head()
    rates = [float(r) for r in metrics["tokens_per_s"].iloc[s["warmup"]:total]]
    losses = [round(float(x), 4) for x in metrics["loss"].iloc[:total]]
    return {"tokens_per_s": statistics.median(rates), "measured_steps": len(rates),
            "tokens_per_s_min": min(rates), "tokens_per_s_max": max(rates),
            "seconds_to_first_step": first_step_at, "seconds_submit_to_first_step": submit_to_first,
            "head_start_s": round(submitted - started, 1), "job_chose_batch": bool(s.get("defaults")) and
            job_chooses_batch(), "tokens_per_step": float(metrics["tokens"].iloc[0]) if "tokens" in metrics else None,
            "losses": losses}


PATHS = {
    "torch_eager": lambda s: torch_loop(s, compile_model=False),
    "torch_compile": lambda s: torch_loop(s, compile_model=True),
    "deepspeed_zero2_eager": deepspeed_loop,
    "deepspeed_zero2_ray_actor": deepspeed_in_ray_actor,
    "deepspeed_zero2_fast": lambda s: deepspeed_loop(s, fast=True),
    "byzer_magic": byzer_magic,
}

if __name__ == "__main__":
    import importlib  # noqa: PLC0415

    # Ray pickles classes of __main__ by value; run the path from the module ``bench.paths`` instead.
    module = importlib.import_module("bench.paths")
    path, settings = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    os.environ.update(settings.get("env") or {})
    result = module.PATHS[path](settings)
    print("RESULT " + json.dumps(result), flush=True)
