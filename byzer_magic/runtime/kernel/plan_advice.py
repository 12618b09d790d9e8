"""How fast a config trains, and the fastest config that fits: a throughput model, the candidate
configs it ranks, and a few measured steps on a GPU when one is free.

Every constant below is explained, with its source, in docs/PLAN.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from byzer_magic.runtime.deepspeed_import import import_deepspeed
from byzer_magic.runtime.kernel.plan_memory import (ALLOCATOR_SLACK, CONTEXT_BYTES, ModelShape, ZeroSetup,
                                                    activation_bytes, buffer_bytes, model_states_bytes,
                                                    resident_bytes, step_bytes, usable_bytes)

# Dense bf16 tensor-core peaks (fp16 for V100), FLOP/s, from NVIDIA's datasheets (sparsity figures halved).
# Matched by substring of the name NVML reports, first match wins (so "H100 PCIe" before "H100").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("H20", 148e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10", 125e12), ("4090", 165e12), ("V100", 125e12))
UNKNOWN_GPU_FLOPS = 100e12

MFU = 0.50               # model FLOPs utilisation of forward + backward at hidden size 2048 (1.1B Llama, H200)
MFU_HIDDEN = 2048        # ... and it grows as (hidden / 2048) ** 0.7 (narrow models run smaller matmuls),
MFU_EXPONENT = 0.7
MFU_CAP = 0.60           # ... up to what a 3B model (hidden 3200) reached
OPTIMIZER_PARAMS_PER_S = 1.2e10  # GPU optimizer step + ZeRO bookkeeping, parameters a second (H200, scaled by peak)
ZERO3_EFFICIENCY = 0.85  # ZeRO-3's gather/release hooks, even on one GPU (measured)
PCIE_BYTES_PER_S = 25e9  # bulk host <-> GPU copies: gradients out, updated parameters back (PCIe 4.0 x16 in practice)
PARAM_FETCH_BYTES_PER_S = 14e9    # ZeRO-3's layer-by-layer fetches of CPU-offloaded parameters (measured)
CPU_ADAM_PARAMS_PER_CORE_S = 1.5e8  # DeepSpeedCPUAdam parameter updates a second per host core (measured)
INTRA_NODE_BYTES_PER_S = 100e9    # NCCL bus bandwidth between GPUs of one node (NVLink)
INTER_NODE_BYTES_PER_S = 25e9     # ... across nodes (one 200 Gb/s NIC per GPU)
REFERENCE_PEAK = 989e12  # the GPU the measured constants come from (H200)
SLOW_FACTOR = 3.0        # warn when the user's config is predicted this much slower than the best that fits
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU of the cluster. GPUs with the same ``node`` share its host CPUs and memory."""
    name: str
    memory_bytes: int               # the card's memory; 0: unknown (fit not checked)
    node: str = "node-0"
    host_cpus: int = 16
    host_memory_bytes: int = 0      # the node's RAM available; 0: unknown (offload memory not checked)

    @property
    def peak_flops(self) -> float:
        return next((f for key, f in PEAK_BF16_FLOPS if key.lower() in self.name.lower()), UNKNOWN_GPU_FLOPS)

    @property
    def known(self) -> bool:
        return any(key.lower() in self.name.lower() for key, _ in PEAK_BF16_FLOPS)


@dataclass(frozen=True)
class Layout:
    """Where a run's workers go: how many GPUs per node, nodes, and what binds them."""
    workers: int
    gpus_per_node: int
    nodes: int
    card_bytes: int          # the smallest card's memory (0: unknown)
    host_bytes: int          # the smallest node's available RAM (0: unknown)
    cores_per_gpu: float
    peak_flops: float
    gpu_name: str

    @classmethod
    def of(cls, gpus: list[GpuInfo], workers: int) -> "Layout":
        by_node: dict[str, list[GpuInfo]] = {}
        for gpu in gpus:
            by_node.setdefault(gpu.node, []).append(gpu)
        per_node = max((len(g) for g in by_node.values()), default=1)
        used = min(workers, len(gpus)) or 1
        nodes = max(1, -(-used // per_node))
        hosts = [g[0].host_memory_bytes for g in by_node.values()]
        return cls(workers=workers, gpus_per_node=min(per_node, used), nodes=nodes,
                   card_bytes=min((g.memory_bytes for g in gpus), default=0),
                   host_bytes=min(hosts) if hosts and all(hosts) else 0,
                   cores_per_gpu=min(g[0].host_cpus / len(g) for g in by_node.values()) if by_node else 1,
                   peak_flops=min((g.peak_flops for g in gpus), default=UNKNOWN_GPU_FLOPS),
                   gpu_name=gpus[0].name if gpus else "CPU")


@dataclass
class Option:
    """One config the advice weighs: its memory per GPU, whether it fits, and how fast it trains."""
    label: str
    zero: ZeroSetup
    micro_batch: int
    checkpointing: bool
    model_states_bytes: int
    activation_bytes: int
    buffer_bytes: int
    host_bytes: int             # per node, for the CPU side of offload (DeepSpeed's estimator)
    fits: bool
    tokens_per_s: float | None  # the whole run (all workers)
    source: str = "estimate"    # or "measured (1 GPU)"
    seconds: float | None = None
    peak_measured_bytes: int | None = None
    step_bytes: int = 0         # extra at the optimizer step, after the activations are freed

    @property
    def memory_per_gpu(self) -> int:
        return self.model_states_bytes + max(self.activation_bytes, self.step_bytes) + self.buffer_bytes

    def describe(self) -> str:
        ckpt = ", checkpointing" if self.checkpointing else ""
        return f"{self.zero.describe()}, micro-batch {self.micro_batch}{ckpt}"

    def changes_from(self, other: "Option") -> int:
        return sum((self.zero.stage != other.zero.stage,
                    self.zero.offload_optimizer != other.zero.offload_optimizer,
                    self.zero.offload_param != other.zero.offload_param,
                    self.micro_batch != other.micro_batch, self.checkpointing != other.checkpointing))


def fast_path_enabled(use_gpu: bool) -> bool:
    from byzer_magic.runtime.worker.speed import fast_path_enabled as enabled  # noqa: PLC0415

    return enabled(use_gpu)


def flops_per_token(shape: ModelShape, seq: int, *, checkpointing: bool = False) -> float:
    """Training FLOPs a token costs: 6N + 12*L*H*S (forward + backward; PaLM, appendix B).
    Activation checkpointing runs the forward twice: 8N + 16*L*H*S."""
    base = 6 * shape.params + 12 * shape.layers * shape.hidden * seq
    return base * 4 / 3 if checkpointing else base


def step_seconds(shape: ModelShape, zero: ZeroSetup, layout: Layout, *, micro: int, seq: int, grad_accum: int,
                 checkpointing: bool) -> float:
    """Predicted seconds for one optimizer step on one GPU (docs/PLAN.md, "Throughput")."""
    tokens = micro * seq
    mfu = min(MFU_CAP, MFU * (shape.hidden / MFU_HIDDEN) ** MFU_EXPONENT)
    mfu *= ZERO3_EFFICIENCY if zero.stage == 3 else 1.0
    compute = grad_accum * tokens * flops_per_token(shape, seq, checkpointing=checkpointing) / (layout.peak_flops * mfu)
    n, world = shape.params, max(1, min(layout.workers, layout.gpus_per_node * layout.nodes))
    comm = 0.0
    if world > 1:
        bw = INTER_NODE_BYTES_PER_S if layout.nodes > 1 else INTRA_NODE_BYTES_PER_S
        share = (world - 1) / world
        if zero.stage == 3:  # gather params for forward and backward, reduce-scatter grads, each micro-batch
            comm = grad_accum * 3 * 2 * n * share / bw
        else:                # reduce grads each micro-batch, all-gather updated params each step
            comm = (grad_accum + 1) * 2 * n * share / bw
    if zero.offload_optimizer:  # the optimizer steps on the host's cores; gradients and parameters cross PCIe
        moved = grad_accum * 2 * n / world / PCIE_BYTES_PER_S          # 16-bit gradients out
        if zero.offload_param:
            moved += grad_accum * 2 * 2 * n / world / PARAM_FETCH_BYTES_PER_S  # params in, forward and backward
        else:
            moved += 2 * n / world / PCIE_BYTES_PER_S                   # updated 16-bit params back
        update = moved + (n / world) / (CPU_ADAM_PARAMS_PER_CORE_S * layout.cores_per_gpu)
    else:
        shards = world if zero.stage >= 1 else 1  # ZeRO-0 steps the whole optimizer on every GPU
        update = (n / shards) / (OPTIMIZER_PARAMS_PER_S * layout.peak_flops / REFERENCE_PEAK)
    return max(compute, comm) + update


def make_option(label: str, shape: ModelShape, zero: ZeroSetup, layout: Layout, ds_config: dict, *, micro: int,
                seq: int, grad_accum: int, checkpointing: bool, on_gpu: bool,
                host_available: int = 0) -> Option:
    """An option with its memory (and, on GPUs, its predicted tokens/s for the whole run)."""
    world = layout.gpus_per_node * layout.nodes
    states, host = model_states_bytes(shape, zero, gpus_per_node=layout.gpus_per_node, nodes=layout.nodes,
                                      mixed_precision=on_gpu)
    fast = on_gpu and fast_path_enabled(True)
    acts = activation_bytes(shape, micro, seq, checkpointing=checkpointing, mixed_precision=on_gpu, fast=fast)
    buffers, step = 0, 0
    if on_gpu:
        if not (zero.offload_optimizer or zero.offload_param):
            # What the GPU holds, counted as measured (docs/PLAN.md, section 3): DeepSpeed's estimator
            # counts the step's fp32 gradient copy as if it lived beside the activations.
            states, step = resident_bytes(shape, zero, world), step_bytes(shape, zero, ds_config, world)
        buffers = buffer_bytes(ds_config, zero, shape.params, world) + CONTEXT_BYTES
        buffers += int(ALLOCATOR_SLACK * (states + max(acts, step)))
    need = states + max(acts, step) + buffers
    if on_gpu:
        fits = not layout.card_bytes or need <= usable_bytes(layout.card_bytes)
        if zero.offload_optimizer and layout.host_bytes:
            fits = fits and host <= layout.host_bytes
        per_gpu = micro * seq * grad_accum / step_seconds(shape, zero, layout, micro=micro, seq=seq,
                                                          grad_accum=grad_accum, checkpointing=checkpointing)
        tps = per_gpu * layout.workers
    else:
        fits, tps = need <= host_available, None
    return Option(label, zero, micro, checkpointing, states, acts, buffers, int(host), fits, tps, step_bytes=step)


def largest_fitting_micro(shape: ModelShape, zero: ZeroSetup, layout: Layout, ds_config: dict, *, seq: int,
                          checkpointing: bool, limit: int = 4096) -> int | None:
    """The largest power-of-two micro-batch whose memory fits one GPU of ``layout`` (None: none fits, or
    the card's memory is unknown); batch_defaults.choose_batch's ``max_micro``."""
    if not layout.card_bytes:
        return None
    best, micro = None, 1
    while micro <= limit:
        option = make_option("probe", shape, zero, layout, ds_config, micro=micro, seq=seq, grad_accum=1,
                             checkpointing=checkpointing, on_gpu=True)
        if not option.fits:
            break
        best, micro = micro, micro * 2
    return best


def candidates(shape: ModelShape, layout: Layout, ds_config: dict, *, seq: int, grad_accum: int,
               max_micro: int | None) -> list[Option]:
    """Every ZeRO stage x offload x micro-batch x checkpointing combination, ranked by nothing yet."""
    adam8 = ZeroSetup.from_ds_config(ds_config).adam8bit  # the user's optimizer stays theirs
    setups = [ZeroSetup(0, adam8bit=adam8)]
    for stage in (1, 2, 3):
        setups += [ZeroSetup(stage, adam8bit=adam8), ZeroSetup(stage, offload_optimizer=True, adam8bit=adam8)]
    setups.append(ZeroSetup(3, offload_optimizer=True, offload_param=True, adam8bit=adam8))
    micros = [m for m in MICRO_BATCHES if max_micro is None or m <= max_micro] or [1]
    return [make_option("candidate", shape, zero, layout, ds_config, micro=m, seq=seq, grad_accum=grad_accum,
                        checkpointing=ckpt, on_gpu=True)
            for zero in setups for m in micros for ckpt in (False, True)]


def fastest_that_fits(options: list[Option], yours: Option) -> Option | None:
    """The fastest option that fits; among those within 1% of it, the one with fewest changes from yours
    (then ZeRO-2, our default, then the fastest)."""
    fitting = [o for o in [yours] + options if o.fits and o.tokens_per_s]  # yours first: it wins a tie
    if not fitting:
        return None
    top = max(o.tokens_per_s for o in fitting)
    near = [o for o in fitting if o.tokens_per_s >= 0.99 * top]
    best = min(near, key=lambda o: (o.changes_from(yours), o.zero.stage != 2, -o.tokens_per_s))
    return best if best is yours else replace(best, label="fastest that fits")


# -- measuring ---------------------------------------------------------------------------------------
def measure_step_rate(build_model: Callable[[], object], ds_config: dict, *, micro: int, seq: int, vocab: int,
                      checkpointing: bool, warmup: int = 2, steps: int = 3) -> dict:
    """Train ``steps`` optimizer steps on random tokens on this process's GPU; tokens/s and peak memory.

    Runs in a fresh process that owns one GPU (a Ray task with ``num_gpus=1, max_calls=1``): DeepSpeed
    needs a process group, made here with a world of one.
    """
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    deepspeed = import_deepspeed()
    import torch  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    deepspeed.init_distributed(dist_backend="nccl", verbose=False)
    with torch.device("cuda"):
        model = build_model()
    if checkpointing:
        model.gradient_checkpointing_enable()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    gas = ds_config.get("gradient_accumulation_steps", 1)
    ids = torch.randint(0, vocab, (micro, seq), device=engine.device)

    def step():
        for _ in range(gas):
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"tokens_per_s": micro * seq * gas / seconds, "step_seconds": seconds,
            "peak_bytes": int(torch.cuda.max_memory_allocated()), "gpu": torch.cuda.get_device_name()}


def measure_options(plan, build_model: Callable[[], object], ds_config: dict, shape: ModelShape, layout: Layout, *,
                    force: bool) -> None:
    """Replace the estimated tokens/s of the plan's options by a few measured steps on one free GPU.

    Each option is timed alone on one GPU (a world of one), then scaled to the run's workers by the
    model's ratio of one-GPU to many-GPU step time (communication is not measured). An option that does
    not fit one GPU by itself keeps its estimate. ``force=False`` (``measure=None``): only when a GPU is free.
    """
    import ray  # noqa: PLC0415

    if ray.available_resources().get("GPU", 0) < 1:
        if force:
            plan.notes.append("no free GPU to measure on: the speeds are estimates")
        return
    one = replace(layout, workers=1, gpus_per_node=1, nodes=1)
    remote = ray.remote(num_gpus=1, max_calls=1)(measure_step_rate)
    for option in [o for o in (plan.yours, plan.best) if o is not None]:
        alone = make_option("alone", shape, option.zero, one, ds_config, micro=option.micro_batch,
                            seq=plan.max_length, grad_accum=plan.grad_accum, checkpointing=option.checkpointing,
                            on_gpu=True)
        if not alone.fits:
            plan.notes.append(f"{option.describe()} does not fit one GPU alone: its speed is an estimate")
            continue
        cfg = dict(ds_config, train_micro_batch_size_per_gpu=option.micro_batch)
        cfg.pop("tensorboard", None)
        zero = {k: v for k, v in (cfg.get("zero_optimization") or {}).items()
                if k not in ("stage", "offload_optimizer", "offload_param")}
        cfg["zero_optimization"] = {**zero, **option.zero.ds_config()}
        try:
            result = ray.get(remote.remote(build_model, cfg, micro=option.micro_batch, seq=plan.max_length,
                                           vocab=shape.vocab, checkpointing=option.checkpointing), timeout=900)
        except Exception as err:  # a failed measurement leaves the estimate, and says why
            plan.notes.append(f"measuring {option.describe()} failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}): its speed is an estimate")
            continue
        kwargs = dict(micro=option.micro_batch, seq=plan.max_length, grad_accum=plan.grad_accum,
                      checkpointing=option.checkpointing)
        scale = step_seconds(shape, option.zero, one, **kwargs) / step_seconds(shape, option.zero, layout, **kwargs)
        option.tokens_per_s = result["tokens_per_s"] * layout.workers * scale
        option.source = "measured (1 GPU)"
        option.peak_measured_bytes = result["peak_bytes"]


# -- the cluster ---------------------------------------------------------------------------------
def _probe_node() -> dict:
    """This node's GPUs (NVML, else nvidia-smi), cores and available memory; runs in a Ray task."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    import psutil  # noqa: PLC0415

    gpus: list[tuple[str, int]] = []
    try:
        import pynvml  # noqa: PLC0415

        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append((name.decode() if isinstance(name, bytes) else name,
                         int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)))
    except Exception:  # no NVML here: ask nvidia-smi
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20).stdout
            gpus = [(n.strip(), int(float(m)) * 2 ** 20) for n, m in
                    (line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line)]
        except (OSError, ValueError, subprocess.SubprocessError):
            gpus = []
    return {"gpus": gpus, "cpus": os.cpu_count() or 1, "memory": int(psutil.virtual_memory().available)}


def detect_gpus(timeout: float = 60) -> list[GpuInfo]:
    """The connected Ray cluster's GPUs, one ``GpuInfo`` each ([] on a CPU cluster)."""
    import ray  # noqa: PLC0415
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: PLC0415

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) >= 1]
    if not nodes:
        return []
    probe = ray.remote(num_cpus=0)(_probe_node)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    try:
        found = ray.get(refs, timeout=timeout)
    except Exception:  # a node that does not answer: its GPUs are counted, their memory unknown
        found = [{"gpus": [], "cpus": 16, "memory": 0}] * len(nodes)
    out = []
    for node, info in zip(nodes, found):
        count = int(node["Resources"]["GPU"])
        kind = next((k.split(":", 1)[1] for k in node["Resources"] if k.startswith("accelerator_type:")), "GPU")
        listed = info["gpus"][:count] + [(kind, 0)] * max(0, count - len(info["gpus"]))
        out += [GpuInfo(name, memory, node=node["NodeID"], host_cpus=info["cpus"], host_memory_bytes=info["memory"])
                for name, memory in listed]
    return out


def host_available_bytes() -> int:
    import psutil  # noqa: PLC0415

    return int(psutil.virtual_memory().available)
