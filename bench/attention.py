"""Causal attention forward + backward at the 1.1B bench's shape, per SDPA backend (one H200).

    python bench/attention.py [--out bench/results/attention.json]

Shape: batch 8, 32 query heads, 4 KV heads, sequence 2048, head dim 64, bf16. Variants: transformers'
default call (grouped K/V through ``enable_gqa``, flash) and K/V repeated to 32 heads for the flash,
cuDNN and memory-efficient kernels. TFLOP/s counts the causal half of 4·B·H·S²·D forward, 2.5x that
backward (flash's recompute included), as the kernels' own papers do.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, HQ, HKV, S, D = 8, 32, 4, 2048, 64


def variants():
    def call(backend, gqa):
        def run(q, k, v):
            with sdpa_kernel([backend]):
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                k2 = k.repeat_interleave(HQ // HKV, dim=1)
                v2 = v.repeat_interleave(HQ // HKV, dim=1)
                return F.scaled_dot_product_attention(q, k2, v2, is_causal=True)
        return run

    return {"flash_enable_gqa": call(SDPBackend.FLASH_ATTENTION, True),
            "flash_repeat_kv": call(SDPBackend.FLASH_ATTENTION, False),
            "cudnn_repeat_kv": call(SDPBackend.CUDNN_ATTENTION, False),
            "efficient_repeat_kv": call(SDPBackend.EFFICIENT_ATTENTION, False)}


def main() -> None:
    import triton.testing

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention.json"))
    args = parser.parse_args()
    q = torch.randn(B, HQ, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, HKV, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, HKV, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(B, HQ, S, D, device="cuda", dtype=torch.bfloat16)
    fwd_flops = 4 * B * HQ * S * S * D / 2
    reference = None
    results = {}
    for name, fn in variants().items():
        try:
            out = fn(q, k, v)
            out.backward(grad)
            grads = [t.grad.clone() for t in (q, k, v)]
            for t in (q, k, v):
                t.grad = None
            if reference is None:
                reference = (out.detach(), grads)
            err = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                      for a, b in zip([out.detach(), *grads], [reference[0], *reference[1]]))
            fwd_ms = triton.testing.do_bench(lambda: fn(q, k, v), return_mode="median")
            both_ms = triton.testing.do_bench(lambda: fn(q, k, v).backward(grad), grad_to_none=[q, k, v],
                                              return_mode="median")
            results[name] = {"fwd_ms": fwd_ms, "fwd_bwd_ms": both_ms, "fwd_tflops": fwd_flops / fwd_ms / 1e9,
                             "fwd_bwd_tflops": 3.5 * fwd_flops / both_ms / 1e9, "rel_err_vs_first": err}
        except RuntimeError as error:
            results[name] = {"error": str(error).splitlines()[0][:200]}
    print(f"{'variant':<22}{'fwd ms':>9}{'fwd+bwd ms':>12}{'fwd TF/s':>10}{'f+b TF/s':>10}{'rel err':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<22}  failed: {r['error']}")
        else:
            print(f"{name:<22}{r['fwd_ms']:>9.3f}{r['fwd_bwd_ms']:>12.3f}{r['fwd_tflops']:>10.0f}"
                  f"{r['fwd_bwd_tflops']:>10.0f}{r['rel_err_vs_first']:>10.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"shape": [B, HQ, HKV, S, D], "torch": torch.__version__,
                                          "cudnn": torch.backends.cudnn.version(), "results": results},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
