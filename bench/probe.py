"""Measurements behind docs/PERF_NOTES.md that need no Ray: DeepSpeed with speed.py's GPU path at several
batch shapes and settings, bare torch.compile at the same batch, the engine step's cost, 7B configs that
fit one H200, memory at each phase, and where the time to the first step goes.

    python bench/probe.py --out $OUT/probe.json e1 e2 ...    # names: see EXPERIMENTS
    python bench/probe.py --tiny e1                          # a tiny model on the CPU (checks the script)

Each experiment runs in its own process; nvidia-smi's peak is read while it runs (bench/h200.py's reader).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.time()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.h200 import LLAMA_1B, LLAMA_7B, TINY, GpuMemory, flops_per_token  # noqa: E402

ADAMW = {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}
B1 = {"model": LLAMA_1B, "seq": 2048}
B7 = {"model": LLAMA_7B, "seq": 4096, "env": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}}
EXPERIMENTS = {
    # our default batch (2**19 tokens a step) through DeepSpeed + speed.py, and the profile of a micro-step
    "ds_m8_g32": {**B1, "kind": "ds", "micro": 8, "gas": 32, "warmup": 1, "steps": 2, "profile": True},
    "ds_m8_g32_warm": {**B1, "kind": "ds", "micro": 8, "gas": 32, "first_step_only": True},
    "ds_m16_g16": {**B1, "kind": "ds", "micro": 16, "gas": 16, "warmup": 1, "steps": 2},
    "compile_m8_g32": {**B1, "kind": "torch_compile", "micro": 8, "gas": 32, "warmup": 1, "steps": 2},
    # the engine step at accumulation 1 under DeepSpeed's settings
    "ds_step": {**B1, "kind": "ds_variants", "micro": 8, "gas": 1, "warmup": 3, "steps": 6, "variants": {
        "zero2": {}, "zero2_no_overlap": {"zero_optimization": {"overlap_comm": False}},
        "zero2_no_overflow_check": {"bf16": {"enabled": True, "check_grad_overflow": False}},
        "zero1": {"zero_optimization": {"stage": 1}}, "zero0": {"zero_optimization": {"stage": 0}}}},
    # 7B on one H200
    "7b_zero3": {**B7, "kind": "ds", "micro": 1, "gas": 8, "warmup": 1, "steps": 2,
                 "ds_extra": {"zero_optimization": {"stage": 3}}},
    "7b_zero2_adam8": {**B7, "kind": "ds", "micro": 2, "gas": 8, "warmup": 1, "steps": 2, "optimizer": "adamw8bit"},
    "ds_m32_g8": {**B1, "kind": "ds", "micro": 32, "gas": 8, "warmup": 1, "steps": 2},
    # 8-bit AdamW as a job configures it: "optimizer": {"type": "AdamW8bit"} (worker/optim.py)
    "7b_adam8_cfg_m3": {**B7, "kind": "ds", "micro": 3, "gas": 8, "warmup": 1, "steps": 2, "timeout": 170,
                        "ds_extra": {"optimizer": {"type": "AdamW8bit", "params": dict(ADAMW)}}},
    "7b_adam8_cfg_m3_warm": {**B7, "kind": "ds", "micro": 3, "gas": 8, "first_step_only": True,
                             "ds_extra": {"optimizer": {"type": "AdamW8bit", "params": dict(ADAMW)}}},
    "7b_zero2_adam8_m3": {**B7, "kind": "ds", "micro": 3, "gas": 8, "warmup": 1, "steps": 2,
                          "optimizer": "adamw8bit"},
}


def gib(n: float) -> float:
    return round(n / 2 ** 30, 2)


def _init_dist(gpu: bool):
    import deepspeed  # noqa: PLC0415
    import torch  # noqa: PLC0415

    if torch.distributed.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if not gpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo", verbose=False)


def ds_config(s: dict, extra: dict | None = None) -> dict:
    from byzer_magic.runtime.config import _merge, resolve_ds_config  # noqa: PLC0415

    user = {"train_micro_batch_size_per_gpu": s["micro"], "gradient_accumulation_steps": s["gas"],
            "optimizer": {"type": "AdamW", "params": dict(ADAMW)}}
    user = _merge(user, s.get("ds_extra") or {})
    user = _merge(user, extra or {})
    cfg, _ = resolve_ds_config(user, on_gpu=s["gpu"], total_steps=1000)
    return cfg


def adamw8bit(params):
    """torchao's AdamW with 8-bit moments (block-wise, 256), fp32 master weights kept by DeepSpeed; the lr
    DeepSpeed's scheduler writes as a float is turned back into the tensor torchao expects."""
    import torch  # noqa: PLC0415
    from torchao.optim import AdamW8bit  # noqa: PLC0415

    class DeepSpeedAdamW8bit(AdamW8bit):
        def step(self, closure=None):
            for group in self.param_groups:
                if not isinstance(group["lr"], torch.Tensor):
                    group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32)
            return super().step(closure)

    return DeepSpeedAdamW8bit(params, lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"],
                              weight_decay=ADAMW["weight_decay"])


def build_engine(s: dict, extra: dict | None = None, marks: dict | None = None):
    import deepspeed  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from byzer_magic.runtime.models import build_training_model  # noqa: PLC0415
    from byzer_magic.runtime.worker import speed  # noqa: PLC0415

    marks = marks if marks is not None else {}
    device = "cuda" if s["gpu"] else "cpu"
    torch.manual_seed(0)
    model = build_training_model("sfft/llama2", model_config=s["model"], device=device,
                                 dtype=torch.bfloat16 if s["gpu"] else None)
    marks["built"] = time.time() - STARTED
    cfg = ds_config(s, extra)
    model = speed.prepare_model(model, use_gpu=s["gpu"], zero_stage=int(cfg["zero_optimization"]["stage"]))
    optimizer = None
    if s.get("optimizer") == "adamw8bit":
        cfg.pop("optimizer")
        optimizer = adamw8bit(model.parameters())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), optimizer=optimizer,
                                      config=cfg)
    marks["engine"] = time.time() - STARTED
    return engine


def micro_steps(engine, s: dict, n: int, batches, phases: dict | None = None, memory: dict | None = None):
    import torch  # noqa: PLC0415

    from byzer_magic.runtime.worker import speed  # noqa: PLC0415

    sync = torch.cuda.synchronize if s["gpu"] else (lambda: None)
    loss = None
    for i in range(n):
        ids = batches[i % len(batches)]
        boundary = engine.is_gradient_accumulation_boundary()
        t = [time.perf_counter()]
        before = torch.cuda.memory_allocated() if s["gpu"] and memory is not None else 0
        loss = speed.causal_lm_loss(engine, ids)
        if phases is not None:
            sync()
            t.append(time.perf_counter())
            if memory is not None and s["gpu"]:
                memory["activations_gb"] = gib(torch.cuda.memory_allocated() - before)
        engine.backward(loss)
        if phases is not None:
            sync()
            t.append(time.perf_counter())
            if memory is not None and s["gpu"] and boundary:
                torch.cuda.reset_peak_memory_stats()
        engine.step()
        if phases is not None:
            sync()
            t.append(time.perf_counter())
            names = ("forward", "backward", "step_boundary" if boundary else "step")
            for name, a, b in zip(names, t, t[1:]):
                phases.setdefault(name, []).append(round(1e3 * (b - a), 2))
            if memory is not None and s["gpu"] and boundary:
                memory["step_peak_gb"] = gib(torch.cuda.max_memory_allocated())
    return loss


def batches_for(s: dict):
    import torch  # noqa: PLC0415

    g = torch.Generator().manual_seed(1)
    pool = torch.randint(0, s["model"]["vocab_size"], (4, s["micro"], s["seq"]), generator=g)
    return [b.to("cuda" if s["gpu"] else "cpu") for b in pool]


def run_ds(s: dict, extra: dict | None = None) -> dict:
    import statistics  # noqa: PLC0415

    import torch  # noqa: PLC0415

    marks = {"imported": None}
    import deepspeed  # noqa: F401,PLC0415

    marks["imported"] = time.time() - STARTED
    _init_dist(s["gpu"])
    engine = build_engine(s, extra, marks)
    out: dict = {"marks_s": marks}
    if s["gpu"]:
        out["after_init_gb"] = gib(torch.cuda.memory_allocated())
    batches = batches_for(s)
    sync = torch.cuda.synchronize if s["gpu"] else (lambda: None)
    micro_steps(engine, s, 1, batches)
    sync()
    marks["first_micro_step"] = time.time() - STARTED
    micro_steps(engine, s, s["gas"] - 1, batches)
    sync()
    marks["first_step"] = time.time() - STARTED
    if s.get("first_step_only"):
        return out
    micro_steps(engine, s, s["gas"] * (s.get("warmup", 1) - 1), batches)
    sync()
    if s["gpu"]:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    micro_steps(engine, s, s["gas"] * s["steps"], batches)
    sync()
    seconds = time.perf_counter() - t0
    out["tokens_per_s"] = s["steps"] * s["gas"] * s["micro"] * s["seq"] / seconds
    if s["gpu"]:
        out.update(max_allocated_gb=gib(torch.cuda.max_memory_allocated()),
                   max_reserved_gb=gib(torch.cuda.max_memory_reserved()))
    phases, memory = {}, {}
    n = 3 if s["gas"] > 3 else 3 * s["gas"]
    micro_steps(engine, s, n, batches, phases, memory)
    out["phase_ms"] = {k: statistics.median(v) for k, v in phases.items()}
    out["memory"] = memory
    if s.get("profile") and s["gpu"]:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            micro_steps(engine, s, 2, batches)
            sync()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=70)
        (Path(os.environ.get("OUT", "/tmp")) / f"profile_{s['name']}.txt").write_text(table)
    engine.destroy()
    return out


def run_variants(s: dict) -> dict:
    import gc  # noqa: PLC0415

    import torch  # noqa: PLC0415

    out = {}
    for name, extra in s["variants"].items():
        try:
            out[name] = run_ds(s, extra)
        except Exception as err:  # one variant's failure does not hide the others
            out[name] = {"error": f"{type(err).__name__}: {err}"[:400]}
        gc.collect()
        if s["gpu"]:
            torch.cuda.empty_cache()
    return out


def run_torch_compile(s: dict) -> dict:
    from bench import paths  # noqa: PLC0415

    settings = dict(s)
    out = paths.torch_loop(settings, compile_model=True)
    return out


def one(name: str, s: dict) -> dict:
    os.environ.update(s.get("env") or {})
    kind = s["kind"]
    out = {"ds": run_ds, "ds_variants": run_variants, "torch_compile": run_torch_compile}[kind](s)
    if "tokens_per_s" in out:
        fpt, _ = flops_per_token(s["model"], s["seq"])
        out["mfu"] = round(out["tokens_per_s"] * fpt / 989e12, 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--out", default=str(HERE / "results" / "probe.json"))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--budget", type=float, default=560, help="seconds: later experiments are skipped")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, path = args.one
        print("RESULT " + json.dumps(one(name, json.loads(Path(path).read_text()))), flush=True)
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(out.read_text()) if out.exists() else {}
    for name in args.names:
        elapsed = time.time() - STARTED
        if elapsed > args.budget - 30:
            report[name] = {"error": f"skipped: {elapsed:.0f} s of the budget used"}
            continue
        s = {**EXPERIMENTS[name], "name": name, "gpu": not args.tiny}
        if args.tiny:
            s.update(model=TINY, seq=128, micro=2, env={})
            s["gas"] = min(s["gas"], 2)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(s, f)
        memory = GpuMemory()
        if not args.tiny:
            memory.start()
        started = time.time()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, f.name]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, min(s.get("timeout", 150), args.budget - elapsed)),
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
            text = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            text = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
            text += "\nTIMED OUT"
        memory.stop.set()
        lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        result = json.loads(lines[-1][7:]) if lines else {"error": "\n".join(text.splitlines()[-25:])}
        result.update(wall_s=round(time.time() - started, 1), smi_peak_gb=round(memory.peak, 2) or None)
        report[name] = result
        with open(out.with_suffix(".log"), "a") as log:
            log.write(f"===== {name}\n{text[-200_000:]}\n")
        out.write_text(json.dumps(report, indent=1) + "\n")
        keys = ("tokens_per_s", "mfu", "phase_ms", "smi_peak_gb", "max_allocated_gb", "memory", "marks_s", "error")
        parts = {k: v for k, v in result.items() if isinstance(v, dict) and "marks_s" in v} or {name: result}
        for part, r in parts.items():
            brief = {k: r.get(k) for k in keys if r.get(k) is not None}
            print(part, json.dumps(brief)[:1200], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
