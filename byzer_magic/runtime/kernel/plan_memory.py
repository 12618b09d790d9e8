"""Memory a training run needs per GPU: model states (DeepSpeed's own estimators) and activations.

The formulas and where their constants come from are in docs/PLAN.md. Nothing here touches a GPU: a
model's sizes come from a copy built on PyTorch's ``meta`` device, which allocates no memory.
"""
from __future__ import annotations

from dataclasses import dataclass

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
                      max_positions=int(positions) if positions else None)


@dataclass(frozen=True)
class ZeroSetup:
    """The memory-relevant part of a DeepSpeed config."""
    stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False

    @classmethod
    def from_ds_config(cls, cfg: dict) -> "ZeroSetup":
        zero = cfg.get("zero_optimization") or {}

        def offloaded(key: str) -> bool:
            part = zero.get(key)
            return isinstance(part, dict) and str(part.get("device", "none")).lower() in ("cpu", "nvme")

        stage = int(zero.get("stage", 0))
        return cls(stage=stage, offload_optimizer=stage >= 1 and offloaded("offload_optimizer"),
                   offload_param=stage == 3 and offloaded("offload_param"))

    def describe(self) -> str:
        parts = [p for p, on in (("optimizer", self.offload_optimizer), ("params", self.offload_param)) if on]
        return f"ZeRO-{self.stage}, " + (f"offload {' + '.join(parts)}" if parts else "no offload")

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


# The loss: bf16 logits (2), their fp32 copy (4) and the log-softmax kept for backward (4), per entry. Only
# the log-softmax is kept till backward, but the other two exist at the end of the forward pass, the peak.
LOGITS_BYTES_PER_ENTRY = 10


def activation_bytes(shape: ModelShape, micro_batch: int, seq: int, *, checkpointing: bool,
                     mixed_precision: bool = True) -> int:
    """Peak activation memory of one micro-batch on one GPU (forward done, backward starting).

    With activation checkpointing each block keeps only its bf16 input (2h a token) and one block's full
    activations exist at a time, while it is recomputed in the backward pass.
    """
    block = _block_bytes_per_token(shape)
    layers = shape.layers * 2 * shape.hidden + block if checkpointing else shape.layers * block
    per_token = layers + 8 * shape.hidden + 16 + LOGITS_BYTES_PER_ENTRY * shape.vocab  # final norm, ids, labels
    total = micro_batch * seq * per_token
    return total if mixed_precision else 2 * total  # fp32: every 16-bit tensor doubles (an upper bound)


def buffer_bytes(ds_config: dict, zero: ZeroSetup, params: int, world: int = 1) -> int:
    """GPU memory DeepSpeed holds beyond the model states its estimators count (measured, docs/PLAN.md):
    the 16-bit gradient bucket of ``reduce_bucket_size`` elements (ZeRO-1/2/3), ZeRO-3's live gathered
    parameters (``stage3_max_live_parameters``, 16-bit), and, when ZeRO-1/2 offloads the optimizer, the
    16-bit gradient partition staged on the GPU before its copy to the host."""
    if zero.stage == 0:
        return 0
    section = ds_config.get("zero_optimization") or {}

    def number(key: str, default: float) -> float:
        value = section.get(key, default)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    out = 2 * number("reduce_bucket_size", 5e8)
    if zero.stage == 3:
        out += 2 * min(number("stage3_max_live_parameters", 1e9), params)
    elif zero.offload_optimizer:
        out += 2 * params / world
    return int(out)


# Room on a card for what no estimate covers: the CUDA context, NCCL, the allocator's fragmentation.
USABLE_FRACTION = 0.92


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
