"""Memory a training run needs per GPU: model states (DeepSpeed's own estimators) and activations.

The formulas and where their constants come from are in docs/PLAN.md. Nothing here touches a GPU: a
model's sizes come from a copy built on PyTorch's ``meta`` device, which allocates no memory.
"""
from __future__ import annotations

from dataclasses import dataclass

from byzer_magic.runtime.deepspeed_import import import_deepspeed

GiB = 2 ** 30


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that memory and FLOPs depend on."""
    params: int                 # distinct parameters (tied embeddings counted once)
    largest_layer_params: int   # the largest module's own parameters (DeepSpeed's ZeRO-3 estimator input)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int | None   # None: the architecture has no fixed limit
    arch: str = ""              # the model's class name (decides whether speed.py's fused loss applies)

    @property
    def kv_hidden(self) -> int:
        return self.kv_heads * (self.hidden // max(self.heads, 1))


def model_shape(model) -> ModelShape:
    """A ``ModelShape`` for a (meta-device) transformers model.

    Parameters are counted by identity, not by ``data_ptr()`` as DeepSpeed's ``model_to_params`` does:
    on the meta device every pointer is 0.
    """
    params = {id(p): p.numel() for p in model.parameters()}
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    cfg = model.config
    hidden = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    intermediate = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    positions = getattr(cfg, "max_position_embeddings", None)
    return ModelShape(params=sum(params.values()), largest_layer_params=largest,
                      layers=int(cfg.num_hidden_layers), hidden=hidden, heads=heads,
                      kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
                      intermediate=int(intermediate), vocab=int(cfg.vocab_size),
                      max_positions=int(positions) if positions else None, arch=type(model).__name__)


@dataclass(frozen=True)
class ZeroSetup:
    """The memory-relevant part of a DeepSpeed config."""
    stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    adam8bit: bool = False      # "optimizer": {"type": "AdamW8bit"} (worker/optim.py): 8-bit Adam moments

    @classmethod
    def from_ds_config(cls, cfg: dict) -> "ZeroSetup":
        zero = cfg.get("zero_optimization") or {}

        def offloaded(key: str) -> bool:
            part = zero.get(key)
            return isinstance(part, dict) and str(part.get("device", "none")).lower() in ("cpu", "nvme")

        stage = int(zero.get("stage", 0))
        opt = str((cfg.get("optimizer") or {}).get("type", "")).lower()
        return cls(stage=stage, offload_optimizer=stage >= 1 and offloaded("offload_optimizer"),
                   offload_param=stage == 3 and offloaded("offload_param"), adam8bit=opt == "adamw8bit")

    def describe(self) -> str:
        parts = [p for p, on in (("optimizer", self.offload_optimizer), ("params", self.offload_param)) if on]
        return f"ZeRO-{self.stage}, " + (f"offload {' + '.join(parts)}" if parts else "no offload") + \
            (", 8-bit AdamW" if self.adam8bit else "")

    def ds_config(self) -> dict:
        """This setup as a ``zero_optimization`` section to merge over a user's config."""
        zero: dict = {"stage": self.stage}
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if self.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        return zero


def model_states_bytes(shape: ModelShape, zero: ZeroSetup, *, gpus_per_node: int = 1, nodes: int = 1,
                       mixed_precision: bool = True) -> tuple[int, int]:
    """(per GPU, per node's CPU) bytes for parameters, gradients and Adam states.

    ZeRO-2 and ZeRO-3 are DeepSpeed's estimators (``estimate_zero2_model_states_mem_needs``,
    ``estimate_zero3_model_states_mem_needs``, the functions behind its ``*_all_cold`` printers).
    DeepSpeed has none for ZeRO-0/1: ZeRO-0 is its ZeRO-2 count on one GPU (nothing partitioned,
    2 + 18 bytes a parameter), ZeRO-1 partitions only the 16 bytes of fp32 gradient, master weights and
    Adam moments (2 + 2 + 16/N). Without mixed precision (fp32 on the CPU) parameters take 4 bytes, not 2.
    """
    import_deepspeed()
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: PLC0415
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: PLC0415

    n, world = shape.params, gpus_per_node * nodes
    if zero.stage >= 3:
        # Parameter offload without optimizer offload has no estimator: counted without it (an upper bound).
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=n, largest_layer_params=shape.largest_layer_params, num_gpus_per_node=gpus_per_node,
            num_nodes=nodes, cpu_offload=zero.offload_optimizer,
            cpu_offload_params=zero.offload_optimizer and zero.offload_param, zero_init=True)
    elif zero.stage == 2 or (zero.stage == 1 and zero.offload_optimizer):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total_params=n, num_gpus_per_node=gpus_per_node,
                                                         num_nodes=nodes, cpu_offload=zero.offload_optimizer)
        if zero.stage == 1:
            gpu += 2 * n  # ZeRO-1 keeps every 16-bit gradient on every GPU
    elif zero.stage == 1:
        cpu, gpu = n * 4 * gpus_per_node * 1.5, 4 * n + int(16 * n / world)
    else:
        cpu, gpu = estimate_zero2_model_states_mem_needs(total_params=n, num_gpus_per_node=1, num_nodes=1,
                                                         cpu_offload=False)
    if not mixed_precision and not zero.offload_param:
        gpu += 2 * n
    return int(gpu), int(cpu)


# Bytes kept per token by one LLaMA block in bf16, read off the tensors autograd saves (docs/PLAN.md):
#   2 RMSNorms x (fp32 copy 4h + bf16 normalised 2h + weighted output 2h) = 16h
#   attention: q 2h + k, v 2 x 2h_kv + output 2h + log-sum-exp 4 bytes a head (fp32)
#   SwiGLU MLP: gate 2I + up 2I + silu(gate) 2I + product 2I = 8I
# The attention is PyTorch's SDPA (flash / memory-efficient kernels): no seq x seq scores are kept.
def _block_bytes_per_token(shape: ModelShape) -> int:
    return 20 * shape.hidden + 4 * shape.kv_hidden + 8 * shape.intermediate + 4 * shape.heads + 8


# The same block on speed.py's GPU path (a compiled layer, K/V repeated to every head for cuDNN): the
# inputs of the two norms, the two normalised outputs, q, the repeated k and v, the attention output and
# the residual (2h each = 16h), gate, up and their product (6I), the log-sum-exp; measured on an H200
# within 1% at 1.1B and 7B (docs/PLAN.md, section 6).
def _fast_block_bytes_per_token(shape: ModelShape) -> int:
    return 16 * shape.hidden + 6 * shape.intermediate + 4 * shape.heads + 8


# The loss: bf16 logits (2), their fp32 copy (4) and the log-softmax kept for backward (4), per entry. Only
# the log-softmax is kept till backward, but the other two exist at the end of the forward pass, the peak.
LOGITS_BYTES_PER_ENTRY = 10


def _fused_loss(shape: ModelShape) -> bool:
    from byzer_magic.runtime.worker.speed import FUSED_LOSS_MODELS  # noqa: PLC0415

    return shape.arch in FUSED_LOSS_MODELS


def activation_bytes(shape: ModelShape, micro_batch: int, seq: int, *, checkpointing: bool,
                     mixed_precision: bool = True, fast: bool = False) -> int:
    """Peak activation memory of one micro-batch on one GPU (forward done, backward starting).

    With activation checkpointing each block keeps only its bf16 input (2h a token) and one block's full
    activations exist at a time, while it is recomputed in the backward pass. ``fast``: speed.py's GPU
    path (compiled layers; the fused loss keeps the bf16 hidden-state gradient, 2h a token, the LM head's
    gradient, 2Vh, and one chunk of bf16 logits at a time instead of [tokens, vocab] in fp32).
    """
    block = _fast_block_bytes_per_token(shape) if fast else _block_bytes_per_token(shape)
    layers = shape.layers * 2 * shape.hidden + block if checkpointing else shape.layers * block
    tokens = micro_batch * seq
    if fast and _fused_loss(shape):
        from byzer_magic.runtime.worker.speed import LOSS_CHUNK_TOKENS  # noqa: PLC0415

        head = tokens * (10 * shape.hidden + 16) + 2 * shape.vocab * shape.hidden \
            + 2 * min(tokens, LOSS_CHUNK_TOKENS) * shape.vocab
        return tokens * layers + head
    per_token = layers + 8 * shape.hidden + 16 + LOGITS_BYTES_PER_ENTRY * shape.vocab  # final norm, ids, labels
    total = tokens * per_token
    return total if mixed_precision else 2 * total  # fp32: every 16-bit tensor doubles (an upper bound)


def buffer_bytes(ds_config: dict, zero: ZeroSetup, params: int, world: int = 1) -> int:
    """GPU memory DeepSpeed holds beyond the model states its estimators count (measured, docs/PLAN.md):
    the 16-bit gradient bucket of ``reduce_bucket_size`` elements (ZeRO-1/2/3; two with ``overlap_comm``),
    ZeRO-3's live gathered parameters (``stage3_max_live_parameters``, 16-bit), and, when ZeRO-1/2 offloads
    the optimizer, the 16-bit gradient partition staged on the GPU before its copy to the host."""
    if zero.stage == 0:
        return 0
    section = ds_config.get("zero_optimization") or {}

    def number(key: str, default: float) -> float:
        value = section.get(key, default)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    out = 2 * number("reduce_bucket_size", 5e8) * (2 if section.get("overlap_comm", True) else 1)
    if zero.stage == 3:
        out += 2 * min(number("stage3_max_live_parameters", 1e9), params)
    elif zero.offload_optimizer:
        out += 2 * params / world
    return int(out)


# -- what a GPU holds, as nvidia-smi reads it (measured on an H200, docs/PLAN.md section 6) ----------
ADAM_STATE_BYTES = 8.0              # fp32 Adam moments m and v, a parameter
ADAM8_STATE_BYTES = 2 + 8 / 256     # torchao's 8-bit m and v, plus an fp32 scale per block of 256
STEP_BYTES = 6.0                    # at the optimizer step: the flattened bf16 gradient partition and its
                                    # fp32 copy (issue 13's 7B OOM: 114.8 GiB in use, 25.1 GiB more asked)
ADAM8_STEP_BYTES = 3.75             # torchao's compiled 8-bit step: its fp32 intermediates (7B, measured)
CONTEXT_BYTES = int(1.5 * GiB)      # CUDA context, cuBLAS/cuDNN workspaces, NCCL: nvidia-smi over torch's
                                    # reserved memory was 1.3-1.9 GiB
ALLOCATOR_SLACK = 0.01              # expandable segments (build_training_model sets them): reserved was
                                    # within 1% of the allocated peak


def resident_bytes(shape: ModelShape, zero: ZeroSetup, world: int = 1) -> int:
    """What DeepSpeed holds on each GPU through forward and backward, no offload: bf16 parameters (whole
    below ZeRO-3), bf16 gradients (whole below ZeRO-2), fp32 master weights and Adam states (whole at
    ZeRO-0). DeepSpeed's estimator also counts the fp32 gradient copy, which exists only at the step."""
    n = shape.params
    par, grad, opt = (world if zero.stage >= k else 1 for k in (3, 2, 1))
    states = ADAM8_STATE_BYTES if zero.adam8bit else ADAM_STATE_BYTES
    return int(2 * n / par + 2 * n / grad + (4 + states) * n / opt)


def step_bytes(shape: ModelShape, zero: ZeroSetup, ds_config: dict, world: int = 1) -> int:
    """Extra GPU memory at the optimizer step, when the activations are gone: the partition's gradient
    flattened and copied to fp32 (ZeRO-3: one ``sub_group_size`` at a time) and, with 8-bit Adam,
    torchao's intermediates."""
    n = shape.params / (world if zero.stage >= 1 else 1)
    if zero.stage == 3:
        sub = (ds_config.get("zero_optimization") or {}).get("sub_group_size", 1e9)
        n = min(n, float(sub) if isinstance(sub, (int, float)) else 1e9)
    return int(n * (STEP_BYTES + (ADAM8_STEP_BYTES if zero.adam8bit else 0)))


# Room on a card for what no estimate covers. GPU estimates count the CUDA context and the allocator's
# slack themselves (measured within 3% on an H200); offload configs rely on DeepSpeed's estimators.
USABLE_FRACTION = 0.96


def usable_bytes(card_bytes: int) -> int:
    return int(card_bytes * USABLE_FRACTION)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    if n >= 100 * GiB:
        return f"{n / GiB:.0f} GiB"
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / 2 ** 20:.0f} MiB" if n >= 2 ** 20 else f"{max(n, 0) / 1024:.0f} KiB"
