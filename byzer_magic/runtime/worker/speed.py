"""Device-specific speed-ups of the training step, kept apart from the loop (torchtitan's split).

``prepare_model`` runs before DeepSpeed wraps the model; ``causal_lm_loss`` computes a micro-batch's
loss. On the CPU both are the plain path. On a GPU ``prepare_model`` makes three changes (their
predictions and measurements are in docs/PERF_NOTES.md); none changes the model's parameters, their
names or its checkpoints:

- each decoder layer is compiled (``torch.compile``, one graph reused by every layer): RMSNorm, RoPE,
  SwiGLU and the residual adds become a few fused kernels instead of dozens of eager ones;
- attention runs through SDPA with the keys/values expanded to all heads, so the fastest fused kernel
  (cuDNN's on Hopper, else flash) can take it, never the math fallback;
- the LM head computes the next-token loss itself (``linear_cross_entropy``): bf16 logits, one fused
  softmax kernel, and the gradients taken in the same pass, so no fp32 [tokens, vocab] tensor exists.

Under ZeRO-3 (no whole-layer compile) RMSNorm, SwiGLU and RoPE are fused one by one instead (fused.py).
Compiled kernels are cached in ``$BYZER_MAGIC_HOME/compile_cache`` (or ``compile_cache``): the next job
of the same shapes skips most of the compile (docs/PERF_NOTES.md, "First step").

``BYZER_MAGIC_FAST=0`` turns all off (the plain path on a GPU, as tests/test_gpu.py compares).
"""
from __future__ import annotations

import contextlib
import inspect
import os

import torch
import torch.nn.functional as F

# Causal LMs whose forward is exactly "decoder -> lm_head -> shifted cross-entropy" (no logit scaling
# or soft-capping): for these the fused loss computes the same function as the model's own.
FUSED_LOSS_MODELS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                     "BaiChuanForCausalLM")
ATTENTION_NAME = "byzer_sdpa"
IGNORE_INDEX = -100
# Tokens per chunk of the fused loss: bounds its bf16 logits to chunk x vocab (1 GiB at 16k x 32k).
LOSS_CHUNK_TOKENS = 16384


def fast_path_enabled(use_gpu: bool) -> bool:
    return use_gpu and os.environ.get("BYZER_MAGIC_FAST", "1") != "0"


def prepare_model(model, *, use_gpu: bool, zero_stage: int, compile_cache: str | None = None):
    """The model to hand to DeepSpeed (e.g. compiled, with fused kernels) for this device and ZeRO stage.
    ``compile_cache``: where compiled kernels are kept (default ``$BYZER_MAGIC_HOME/compile_cache``)."""
    if use_gpu:  # ``"optimizer": {"type": "AdamW8bit"}`` (optim.py) for DeepSpeed to build
        from byzer_magic.runtime.worker import optim  # noqa: PLC0415

        optim.register()
    if not fast_path_enabled(use_gpu):
        return model
    done = [f"compile cache {use_compile_cache(compile_cache)}"]
    try:
        if use_sdpa_attention(model):
            order = prefer_fast_sdpa_backends()
            done.append(f"attention {ATTENTION_NAME} ({'>'.join(order) or 'default order'})")
    except Exception as err:  # an unknown transformers version: its own attention is still correct
        print(f"[speed] attention left as is: {type(err).__name__}: {err}", flush=True)
    if use_fused_loss(model):
        done.append("fused linear+cross-entropy loss")
    if zero_stage < 3:
        done.append(f"{compile_layers(model)} layers compiled")
    else:  # ZeRO-3 gathers each sub-module's weights in forward hooks, which a compiled layer would trace
        from byzer_magic.runtime.worker.fused import fuse_pieces  # noqa: PLC0415

        done.append(f"fused {', '.join(fuse_pieces(model)) or 'nothing'}")
    print(f"[speed] {type(model).__name__}: {', '.join(done) or 'no change'}", flush=True)
    return model


def causal_lm_loss(engine, input_ids):
    """Next-token cross-entropy of ``input_ids`` under ``engine`` (labels are the inputs, shifted)."""
    return engine(input_ids=input_ids, labels=input_ids).loss


# -- compiled layers ---------------------------------------------------------------------------------

def use_compile_cache(folder: str | None = None) -> str:
    """Point inductor's on-disk caches (FX graphs, AOT autograd, Triton kernels) at a folder that
    outlives the job, unless the environment already chose one; returns the folder in use."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    if folder is None:
        from byzer_magic.runtime.home import state_dir  # noqa: PLC0415

        folder = os.path.join(state_dir(), "compile_cache")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return str(folder)


def decoder_layers(model) -> list:
    """The model's repeated blocks (``model.model.layers`` for LLaMA-family models), or []."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    layers = getattr(base, "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def compile_layers(model) -> int:
    """Compile each decoder layer in place (``Module.compile``: names and state dicts stay as they are).

    Layers share their code, so dynamo traces one and reuses its graph for the rest. Returns how many
    layers were compiled."""
    layers = decoder_layers(model)
    if not layers:
        return 0
    # Allow a graph per distinct layer kind (e.g. sliding-window ones) without falling back to eager,
    # and let a layer that fails to compile run eagerly rather than stop the training job.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.suppress_errors = True
    for layer in layers:
        layer.compile(dynamic=False)
    return len(layers)


# -- attention -----------------------------------------------------------------------------------------

def use_sdpa_attention(model) -> bool:
    """Route a transformers model's attention through ``sdpa_attention`` (no-op for other models)."""
    if not getattr(model, "_supports_attention_backend", False):
        return False
    from transformers import AttentionInterface  # noqa: PLC0415

    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask  # noqa: PLC0415
    except ImportError:  # transformers < 4.53 builds the mask from the attention name itself
        ALL_MASK_ATTENTION_FUNCTIONS = sdpa_mask = None
    AttentionInterface.register(ATTENTION_NAME, sdpa_attention)
    if ALL_MASK_ATTENTION_FUNCTIONS is not None:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION_NAME)
    else:
        model.config._attn_implementation = ATTENTION_NAME
    return True


def prefer_fast_sdpa_backends() -> list[str]:
    """SDPA's backend order for this process: cuDNN first on Hopper (faster than flash-2 there) when a
    small causal forward + backward through it agrees with flash, then flash, memory-efficient, math.
    ``BYZER_MAGIC_SDPA`` (e.g. ``flash,cudnn``) sets the head of the order instead."""
    from torch.nn.attention import SDPBackend  # noqa: PLC0415

    if not hasattr(torch._C, "_set_sdp_priority_order"):
        return []
    wanted = os.environ.get("BYZER_MAGIC_SDPA", "")
    if wanted:
        names = [n.strip().upper() for n in wanted.split(",") if n.strip()]
    elif torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0) and _cudnn_attention_agrees():
        names = ["CUDNN", "FLASH", "EFFICIENT"]
    else:
        names = ["FLASH", "EFFICIENT"]
    by_name = {"CUDNN": SDPBackend.CUDNN_ATTENTION, "FLASH": SDPBackend.FLASH_ATTENTION,
               "EFFICIENT": SDPBackend.EFFICIENT_ATTENTION, "MATH": SDPBackend.MATH}
    order = [int(by_name[n]) for n in names if n in by_name]
    order += [b for b in torch._C._get_sdp_priority_order() if b not in order]
    torch._C._set_sdp_priority_order(order)
    return names


def _cudnn_attention_agrees() -> bool:
    """cuDNN's causal attention, forward and backward, against flash's on a small bf16 problem."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, dout = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16, generator=g)
                         for _ in range(4))
        results = []
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(*leaves, is_causal=True)
            out.backward(dout)
            results.append([out.detach(), *(t.grad for t in leaves)])
        return all(((a.float() - b.float()).norm() / b.float().norm()).item() < 2e-2
                   for a, b in zip(*results))
    except RuntimeError:  # no cuDNN attention in this build, or it refuses the shape
        return False


def sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                   is_causal=None, **kwargs):
    """transformers' attention signature: [batch, heads, seq, dim] in, [batch, seq, heads, dim] out.

    Causal self-attention without a mask (packed pretraining sequences) goes to SDPA with ``is_causal``
    and K/V repeated to every query head: cuDNN's kernel does not take grouped K/V, and repeating them
    costs two small copies. Anything else (a padding mask, decoding) is transformers' own SDPA path."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward  # noqa: PLC0415

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is not None or not causal or query.shape[2] != key.shape[2] or kwargs.get("position_bias") \
            is not None or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout if module.training else 0.0,
                                         is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


# -- fused linear + cross-entropy ----------------------------------------------------------------------

def use_fused_loss(model) -> bool:
    """Make ``model(input_ids=..., labels=...)`` compute its loss with ``linear_cross_entropy``.

    The LM head becomes a ``LossHead`` (an ``nn.Linear`` subclass: same weight, same name) and the
    model's forward, when given labels in training, runs the decoder and hands the head the labels; the
    output then carries the loss and no logits. Other calls (generation, eval with logits) are unchanged."""
    head = getattr(model, "lm_head", None)
    if type(model).__name__ not in FUSED_LOSS_MODELS or type(head) is not torch.nn.Linear or head.bias is not None:
        return False
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        return False
    head.__class__ = LossHead
    model.forward = _forward_with_fused_loss.__get__(model)
    return True


def _forward_with_fused_loss(self, input_ids=None, labels=None, **kwargs):
    """The training forward of a model prepared by ``use_fused_loss`` (bound to the instance)."""
    plain = type(self).forward
    if labels is None or input_ids is None or kwargs.get("use_cache") or kwargs.get("inputs_embeds") is not None \
            or kwargs.get("logits_to_keep") or kwargs.get("return_dict") is False:
        return plain(self, input_ids=input_ids, labels=labels, **kwargs)
    if not (self.training and torch.is_grad_enabled()):
        # Evaluation reuses the fused loss but not the compiled layers: tracing them again for eval
        # mode would cost a compile for one forward.
        with _eager():
            return _fused_output(self, input_ids, labels, kwargs)
    return _fused_output(self, input_ids, labels, kwargs)


def _fused_output(model, input_ids, labels, kwargs):
    from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: PLC0415

    base = getattr(model, model.base_model_prefix)
    if "use_cache" in inspect.signature(base.forward).parameters:
        kwargs = dict(kwargs, use_cache=False)
    out = base(input_ids=input_ids, **kwargs)
    hidden = out if hasattr(out, "dim") else out[0]
    loss = model.lm_head(hidden, labels=labels)
    return CausalLMOutputWithPast(loss=loss)


def _eager():
    """Run compiled functions eagerly inside the block (``torch.compiler.set_stance``, torch >= 2.6)."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance else contextlib.nullcontext()


class LossHead(torch.nn.Linear):
    """An LM head that, given ``labels``, returns the mean next-token loss instead of the logits.

    Called as a module (not through its weight) so that ZeRO-3's hooks gather the weight for it."""

    def forward(self, hidden, labels=None):
        if labels is None:
            return super().forward(hidden)
        return linear_cross_entropy(hidden, self.weight, labels)


def shifted_targets(labels):
    """Position t's target is label t+1; the last position of each sequence has none (ignored)."""
    pad = labels.new_full((*labels.shape[:-1], 1), IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def linear_cross_entropy(hidden, weight, labels, chunk_tokens: int = LOSS_CHUNK_TOKENS):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` shifted by one (as transformers'
    causal-LM loss, ignore index -100), in chunks of ``chunk_tokens`` tokens.

    Each chunk's logits are one bf16 matmul; a compiled kernel turns them into the loss and the logits'
    gradient (softmax - one-hot) / count, in bf16, in one pass; the two gradient matmuls run right away,
    so backward only scales them. This is the same arithmetic as the plain path (bf16 logits upcast
    for the softmax, bf16 logit gradients into the matmuls), without its fp32 [tokens, vocab] copies."""
    targets = shifted_targets(labels).reshape(-1)
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, chunk_tokens)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        count = (targets != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
        inv_count = 1.0 / count
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = None
        ce = _chunk_cross_entropy_compiled() if hidden.is_cuda else _chunk_cross_entropy
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, t = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
            logits = h @ weight.t()
            chunk_loss, grad_logits = ce(logits, t, inv_count, needs_grad)
            loss += chunk_loss
            del logits
            if needs_grad:
                torch.mm(grad_logits, weight, out=grad_hidden[start:start + chunk_tokens])
                if grad_weight is None:
                    grad_weight = grad_logits.t() @ h
                else:
                    grad_weight.addmm_(grad_logits.t(), h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss * inv_count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss.to(grad_hidden.dtype)
        return grad_hidden * scale, grad_weight * scale, None, None


def _chunk_cross_entropy(logits, targets, inv_count, needs_grad: bool):
    """(summed loss, d(mean loss)/d(logits) in the logits' dtype or None) for one chunk."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    picked = x.gather(1, safe[:, None]).squeeze(1)
    loss = torch.where(valid, lse - picked, 0.0).sum()
    if not needs_grad:
        return loss, None
    grad = torch.exp(x - lse[:, None])
    columns = torch.arange(x.shape[1], device=x.device)
    grad = torch.where(columns[None, :] == safe[:, None], grad - 1.0, grad)
    grad = grad * torch.where(valid, inv_count, 0.0)[:, None]
    return loss, grad.to(logits.dtype)


_COMPILED_CE = None


def _chunk_cross_entropy_compiled():
    global _COMPILED_CE
    if _COMPILED_CE is None:
        _COMPILED_CE = torch.compile(_chunk_cross_entropy, dynamic=False)
    return _COMPILED_CE
