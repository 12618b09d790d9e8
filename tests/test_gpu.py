"""GPU checks of speed.py's fast path (run on the device machine, never in CI):

- the fused linear + cross-entropy computes transformers' loss and gradients;
- over 50 DeepSpeed ZeRO-2 bf16 steps, the fast path's loss curve (compiled layers, SDPA attention,
  fused loss) follows the plain path's within bf16 noise, the noise being measured as the gap between
  two runs of the plain path itself.

``BYZER_MAGIC_GPU_TEST_OUT=<file.json>`` keeps the three loss curves (docs/BENCHMARKS.md quotes them).
"""
from __future__ import annotations

import json
import os
import socket

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL_LLAMA = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
               "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 1024}
STEPS, MICRO, SEQ = 50, 4, 512


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("chunk_tokens", [16384, 1000])
def test_fused_loss_matches_transformers(chunk_tokens):
    from byzer_magic.runtime.worker import speed

    torch.manual_seed(0)
    hidden = torch.randn(4, 1024, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(32000, 512, device="cuda") * 0.02).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 32000, (4, 1024), device="cuda")
    labels[1, 100:200] = -100
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()

    loss = speed.linear_cross_entropy(hidden, weight, labels, chunk_tokens=chunk_tokens)
    (loss * 0.25).backward()
    logits = (h2 @ w2.t()).float()  # transformers' ForCausalLMLoss: bf16 logits upcast, mean over targets
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32000), labels[:, 1:].reshape(-1),
                                            ignore_index=-100)
    (ref * 0.25).backward()

    assert abs(loss.item() - ref.item()) < 1e-4 * ref.item()
    assert _rel(hidden.grad, h2.grad) < 1e-2
    assert _rel(weight.grad, w2.grad) < 1e-2


@pytest.fixture(scope="module")
def process_group():
    import deepspeed

    if not torch.distributed.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend="nccl")
    yield


def _learnable_batches():
    """32 fixed sequences over a 2000-token alphabet, 4 per step: the loss falls from ln(32000) through
    the unigram entropy into memorisation, so the two paths are compared along a real curve."""
    g = torch.Generator().manual_seed(3)
    pool = torch.randint(3, 2000, (32, SEQ), generator=g)
    return [pool[(i * MICRO) % 32:(i * MICRO) % 32 + MICRO] for i in range(STEPS)]


def _loss_curve(fast: bool, optimizer: str = "AdamW", states: list | None = None) -> list[float]:
    import deepspeed

    from byzer_magic.runtime.worker import speed
    from byzer_magic.runtime.config import resolve_ds_config
    from byzer_magic.runtime.models import registry

    torch.manual_seed(0)
    model = registry.build_model("sfft/llama2", SMALL_LLAMA)
    params = {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1}
    if optimizer == "AdamW":
        params.update(torch_adam=True, fused=True)
    cfg, _ = resolve_ds_config({"train_micro_batch_size_per_gpu": MICRO,
                                "optimizer": {"type": optimizer, "params": params},
                                "timers": {"throughput": {"enabled": False}}},
                               on_gpu=True, total_steps=STEPS)
    model = speed.prepare_model(model, use_gpu=fast, zero_stage=2)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    losses = []
    for batch in _learnable_batches():
        ids = batch.to(engine.device)
        loss = speed.causal_lm_loss(engine, ids)
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach())
    curve = [x.item() for x in losses]
    if states is not None:
        states += [type(v).__name__ for st in engine.optimizer.optimizer.state.values() for v in st.values()]
    engine.destroy()
    del engine, model
    torch.cuda.empty_cache()
    return curve


def test_fast_path_loss_curve_matches_plain_path(process_group):
    plain = _loss_curve(fast=False)
    plain_again = _loss_curve(fast=False)
    fast = _loss_curve(fast=True)
    noise = max(abs(a - b) for a, b in zip(plain, plain_again))
    gaps = [abs(a - b) for a, b in zip(plain, fast)]
    report = {"steps": STEPS, "plain": plain, "plain_again": plain_again, "fast": fast,
              "plain_vs_plain_max_gap": noise, "fast_vs_plain_max_gap": max(gaps),
              "fast_vs_plain_mean_gap": sum(gaps) / len(gaps)}
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, list)}))
    if os.environ.get("BYZER_MAGIC_GPU_TEST_OUT"):
        with open(os.environ["BYZER_MAGIC_GPU_TEST_OUT"], "w") as f:
            json.dump(report, f, indent=1)

    assert plain[-1] < plain[0] - 2.0, "the curve must fall for the comparison to mean something"
    # bf16 noise: kernels that differ only in summation order drift apart over training; allow the
    # plain path's own run-to-run gap (x3) or 2% of the loss, whichever is larger, at every step.
    for step, (a, b) in enumerate(zip(plain, fast)):
        assert abs(a - b) <= max(3 * noise, 0.02 * a), f"step {step}: plain {a:.4f} vs fast {b:.4f}"


def test_adamw8bit_loss_curve_follows_adamw(process_group):
    """torchao's 8-bit AdamW (worker/optim.py) through DeepSpeed ZeRO-2's config: its curve stays within
    5% of fp32 AdamW's at every step, and the moments really are 8-bit."""
    pytest.importorskip("torchao")
    fp32 = _loss_curve(fast=True)
    states: list = []
    adam8 = _loss_curve(fast=True, optimizer="AdamW8bit", states=states)
    gaps = [abs(a - b) / a for a, b in zip(fp32, adam8)]
    print(json.dumps({"adamw8bit_vs_adamw_max_rel_gap": max(gaps), "mean_rel_gap": sum(gaps) / len(gaps),
                      "final": [fp32[-1], adam8[-1]], "states": sorted(set(states))}))
    if os.environ.get("BYZER_MAGIC_GPU_TEST_OUT"):
        out = os.environ["BYZER_MAGIC_GPU_TEST_OUT"].replace(".json", "_adamw8bit.json")
        with open(out, "w") as f:
            json.dump({"adamw": fp32, "adamw8bit": adam8, "max_rel_gap": max(gaps)}, f, indent=1)
    assert "OptimState8bit" in states
    assert fp32[-1] < fp32[0] - 2.0 and adam8[-1] < adam8[0] - 2.0
    assert max(gaps) < 0.05, f"step {gaps.index(max(gaps))}: AdamW {fp32[gaps.index(max(gaps))]:.4f} vs 8-bit"
