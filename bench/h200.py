"""One H200, one Llama, five ways to train it: our full path and four anchors, measured in one run.

    python bench/h200.py                       # 1.1B: byzer_magic + the four anchors -> bench/results/h200.json
    python bench/h200.py --paths byzer_magic_7b # the Llama-2-7B shape through our path
    python bench/h200.py --tiny                # a tiny model on the CPU: checks every path in a minute or two

Every path trains the same model (TinyLlama-1.1B's shape: hidden 2048, 22 layers, 32 heads, 4 KV heads,
intermediate 5632, vocab 32000) on random tokens, sequence 2048, bf16, AdamW, clipping 1.0. ``byzer_magic``
runs at our defaults (batch_defaults.choose_batch: micro-batch 16 x accumulation 16 = 2**19 tokens an
optimizer step) and ``torch_compile`` at the same batch; the other anchors keep the issue's micro-batch 8,
accumulation 1. Each path runs in its own process (bench/paths.py); its peak GPU memory is read from
nvidia-smi while it runs. MFU counts (6N + 12·L·H·S) FLOPs per token, N the parameters without the input
embedding, against the H200's dense bf16 peak, 989 TFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEAK_FLOPS = 989e12
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048}
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 32000, "max_position_embeddings": 256}
# The measurements (same model and counting) for the table's last column.
REFERENCE_MFU = {"deepspeed_zero2_eager": 0.328, "deepspeed_zero2_ray_actor": 0.325, "torch_eager": 0.364,
                 "torch_compile": 0.441}
ANCHORS = ["torch_eager", "torch_compile", "deepspeed_zero2_eager", "deepspeed_zero2_ray_actor"]
# Paths measured at our default batch rather than the micro-batch 8, accumulation 1.
AT_DEFAULT_BATCH = ("byzer_magic", "torch_compile", "deepspeed_zero2_fast_default")
# 7B on one H200: ZeRO-2 with torchao's 8-bit AdamW (fp32 master weights; worker/optim.py), 3 sequences of
# 4096 a micro-step, accumulation 8 (98k tokens a step: a few steps fit the bench's time; the default
# would be 2**19, 43 s a step).
ADAMW8BIT = {"optimizer": {"type": "AdamW8bit", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8,
                                                            "weight_decay": 0.1}}}


# Variants: (worker in bench/paths.py, settings changed). ``*_fast`` are our speed-ups on DeepSpeed in one
# process (no Ray, no data pipeline): they split our path's time between the model and the rest.
VARIANTS = {
    "byzer_magic_gas8": ("byzer_magic", {"gas": 8}),
    "byzer_magic_7b": ("byzer_magic", {}),
    "deepspeed_zero2_fast": ("deepspeed_zero2_fast", {}),
    "deepspeed_zero1_fast": ("deepspeed_zero2_fast", {"ds_extra": {"zero_optimization": {"stage": 1}}}),
    "deepspeed_zero0_fast": ("deepspeed_zero2_fast", {"ds_extra": {"zero_optimization": {"stage": 0}}}),
    "deepspeed_zero2_fast_flash": ("deepspeed_zero2_fast", {"env": {"BYZER_MAGIC_SDPA": "flash,efficient"}}),
    "deepspeed_zero2_fast_gas8": ("deepspeed_zero2_fast", {"gas": 8}),
    "deepspeed_zero2_fast_default": ("deepspeed_zero2_fast", {}),
}


def default_batch(seq: int) -> tuple[int, int]:
    """Our defaults for one GPU (the plan lets 1.1B take any micro-batch up to 64 at 2048 tokens)."""
    from byzer_magic.runtime.batch_defaults import choose_batch  # noqa: PLC0415

    micro, gas, _ = choose_batch(max_length=seq, workers=1, max_micro=64)
    return micro, gas


def settings_for(path: str, tiny: bool) -> dict:
    """What one path trains: model sizes, batch, steps."""
    gpu = not tiny
    base = {"gpu": gpu, "model": TINY if tiny else LLAMA_1B, "seq": 128 if tiny else 2048, "micro": 2 if tiny else 8,
            "gas": 1, "warmup": 2 if tiny else 6, "steps": 4 if tiny else 12}
    if path in AT_DEFAULT_BATCH:
        base["micro"], base["gas"] = default_batch(base["seq"]) if not tiny else (2, 2)
        base["defaults"] = path == "byzer_magic"  # the job chooses them itself; the bench only sizes its data
    base.update(VARIANTS.get(path, (path, {}))[1])
    if base["gas"] > 1:
        base.update(warmup=2, steps=2 if tiny else 4)
    if path == "byzer_magic_7b":
        base.update(model=TINY if tiny else LLAMA_7B, seq=128 if tiny else 4096, micro=3 if not tiny else 2,
                    gas=8 if not tiny else 2, warmup=1, steps=2 if tiny else 3,
                    ds_extra=ADAMW8BIT if not tiny else {})
    base["name"] = path
    return base


def flops_per_token(model: dict, seq: int) -> tuple[float, int]:
    """6N + 12·L·H·S, N without the input embedding (the LM head's matmul is counted)."""
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    with torch.device("meta"):
        m = LlamaForCausalLM(LlamaConfig(**model))
    n = sum(p.numel() for p in m.parameters()) - m.model.embed_tokens.weight.numel()
    return 6 * n + 12 * model["num_hidden_layers"] * model["hidden_size"] * seq, n


class GpuMemory(threading.Thread):
    """Peak device memory in use (nvidia-smi, GiB) while a path runs: the same reading for every path,
    in-process or inside Ray workers."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak = max(self.peak, float(out.split()[0]) / 1024)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self.stop.wait(0.5)


def stop_head(s: dict) -> None:
    home = Path(s.get("work_dir", "/tmp/bmbench")) / s["name"] / "home"
    code = "from byzer_magic.runtime import cluster; cluster.stop_local_head()"
    subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, env=dict(os.environ, BYZER_MAGIC_HOME=str(home)),
                   timeout=120, check=False)


def run_path(path: str, tiny: bool, log, timeout: float) -> dict:
    s = settings_for(path, tiny)
    worker = VARIANTS.get(path, (path, {}))[0]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(s, f)
    memory = GpuMemory()
    if not tiny:
        memory.start()
    started = time.time()
    proc = subprocess.Popen([sys.executable, str(HERE / "paths.py"), worker, f.name], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    result = None
    for line in proc.stdout:
        log.write(f"[{path}] {line}")
        log.flush()  # a run cut off by the device's time limit keeps every line so far
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    proc.wait()
    watchdog.cancel()
    memory.stop.set()
    log.flush()
    if result is None:
        if worker == "byzer_magic":  # a killed run leaves its Ray head (and its GPU worker) behind
            stop_head(s)
        return {"error": f"exit code {proc.returncode}{' (timed out)' if proc.returncode == -9 else ''}; see the log",
                "wall_s": round(time.time() - started, 1)}
    fpt, n = flops_per_token(s["model"], s["seq"])
    result.update(mfu=result["tokens_per_s"] * fpt / PEAK_FLOPS, flops_per_token=fpt, params_non_embedding=n,
                  peak_mem_gb=round(memory.peak, 2) if not tiny else None, wall_s=round(time.time() - started, 1),
                  settings={k: v for k, v in s.items() if k != "name"})
    return result


def versions() -> dict:
    code = ("import json, torch, transformers\n"
            "out = {'torch': torch.__version__, 'transformers': transformers.__version__, 'cuda': torch.version.cuda,\n"
            "       'cudnn': torch.backends.cudnn.version(), 'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}\n"
            "for name in ('deepspeed', 'ray', 'triton'):\n"
            "    try: out[name] = __import__(name).__version__\n"
            "    except Exception as err: out[name] = None\n"
            "print(json.dumps(out))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.splitlines()[-1])
    try:
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip()
    except OSError:
        out["driver"] = None
    return out


def table(results: dict) -> str:
    rows = [f"{'path':<28}{'tokens/s':>11}{'MFU':>8}{'peak GiB':>10}{'issue MFU':>11}"]
    for path, r in results.items():
        if "error" in r:
            rows.append(f"{path:<28}  failed: {r['error']}")
            continue
        ref = REFERENCE_MFU.get(path)
        mem = "-" if r.get("peak_mem_gb") is None else f"{r['peak_mem_gb']:.1f}"
        rows.append(f"{path:<28}{r['tokens_per_s']:>11,.0f}{r['mfu']:>8.1%}{mem:>10}"
                    f"{'' if ref is None else f'{ref:.1%}':>11}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (checks the script)")
    parser.add_argument("--paths", default="byzer_magic," + ",".join(ANCHORS),
                        help="comma-separated: byzer_magic, byzer_magic_gas8, byzer_magic_7b, " + ", ".join(ANCHORS))
    parser.add_argument("--out", default=str(HERE / "results" / ("h200-tiny.json" if "--tiny" in sys.argv else "h200.json")))
    parser.add_argument("--timeout", type=float, default=420, help="seconds per path before it is stopped")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (later paths get less)")
    parser.add_argument("--timeouts", default="", help="per-path limits, e.g. byzer_magic=240,torch_eager=90")
    parser.add_argument("--log", default=None, help="full log of every path (default: beside --out)")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log or out.with_suffix(".log"))
    report = json.loads(out.read_text()) if out.exists() else {}
    run = {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "versions": versions(), "peak_tflops": PEAK_FLOPS / 1e12}
    results = {}
    report.setdefault("runs", []).append({**run, "paths": []})
    limits = {k: float(v) for k, v in (kv.split("=") for kv in args.timeouts.split(",") if kv)}
    begun = time.time()
    with open(log_path, "a") as log:
        for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
            print(f"== {path}", flush=True)
            limit = limits.get(path, args.timeout)
            if args.budget is not None:
                limit = min(limit, args.budget - (time.time() - begun))
            if limit < 20:
                results[path] = {"error": "not run: the run's time budget was spent", "run": run["started"]}
                report[path] = results[path]
                continue
            results[path] = {**run_path(path, args.tiny, log, limit), "run": run["started"]}
            print(table({path: results[path]}).splitlines()[-1], flush=True)
            report["runs"][-1]["paths"].append(path)
            report[path] = results[path]
            out.write_text(json.dumps(report, indent=2) + "\n")  # after each path: a cut-off run keeps its results
    print("\n" + table({k: v for k, v in report.items() if isinstance(v, dict) and ("tokens_per_s" in v or "error" in v)}))
    ours, anchor = report.get("byzer_magic", {}), report.get("torch_compile", {})
    if ours.get("tokens_per_s") and anchor.get("tokens_per_s") and ours.get("run") == anchor.get("run"):
        print(f"\nbyzer_magic / torch_compile at the same batch, same run: "
              f"{ours['tokens_per_s'] / anchor['tokens_per_s']:.3f}x")
    print(f"\nwritten: {out} (log {log_path})")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
