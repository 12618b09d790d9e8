"""Baichuan-7B: a LLaMA-style decoder whose Q, K and V come from one fused ``W_pack`` projection.

Module names match Baichuan's own checkpoints (``model.layers.N.self_attn.W_pack`` ...), so a
Baichuan-7B folder loads into this class and a folder we save opens with Baichuan's code too.
Attention is torch's SDPA. ``generate()`` works, with transformers' KV cache (``DynamicCache``), so an
exported model can be tried at once; serving at scale is another tool's job.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5 calls the KV cache ``cache`` (in and out); 4.x called it ``past_key_values``.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class BaiChuanConfig(PretrainedConfig):
    """The architecture's sizes; the defaults are Baichuan-7B's."""

    model_type = "baichuan"

    # A plain ``__init__`` (not dataclass fields) so the class works with transformers 4.x and 5.x alike.
    def __init__(self, vocab_size: int = 64000, hidden_size: int = 4096, intermediate_size: int = 11008,
                 num_hidden_layers: int = 32, num_attention_heads: int = 32, hidden_act: str = "silu",
                 max_position_embeddings: int = 4096, initializer_range: float = 0.02,
                 rms_norm_eps: float = 1e-6, rope_theta: float = 10000.0, use_cache: bool = False,
                 pad_token_id: int | None = 0, bos_token_id: int | None = 1, eos_token_id: int | None = 2,
                 tie_word_embeddings: bool = False, **kwargs):
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads "
                             f"({num_attention_heads})")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class BaiChuanRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32: bf16 squares lose too much precision over 4096 channels.
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape (batch, seq, head_dim) for RoPE in the rotate-half layout that LLaMA and Baichuan use.

    Computed per call rather than cached in a buffer: it is cheap, and buffers made on the meta device (fast
    loading, ZeRO-3 init) would have to be rebuilt by hand.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=position_ids.device) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class BaiChuanAttention(nn.Module):
    def __init__(self, config: BaiChuanConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        # W_pack's rows are [q; k; v], each hidden_size long (Baichuan's checkpoint layout).
        q, k, v = self.W_pack(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:  # the keys and values of the earlier positions, with this call's appended
            k, v = cache.update(k, v, self.layer_idx)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class BaiChuanMLP(nn.Module):
    def __init__(self, config: BaiChuanConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BaiChuanDecoderLayer(nn.Module):
    def __init__(self, config: BaiChuanConfig, layer_idx: int = 0):
        super().__init__()
        self.self_attn = BaiChuanAttention(config, layer_idx)
        self.mlp = BaiChuanMLP(config)
        self.input_layernorm = BaiChuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BaiChuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class BaiChuanPreTrainedModel(PreTrainedModel):
    config_class = BaiChuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaiChuanDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # Explicit rather than inherited: the base class's default differs between transformers versions.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, BaiChuanRMSNorm):
            nn.init.ones_(module.weight)


def _attention_mask(attention_mask: torch.Tensor | None, t: int, past: int = 0,
                    device: torch.device | None = None) -> torch.Tensor | None:
    """A boolean (batch, 1, t, past + t) mask for SDPA: query i (at position past + i) sees the keys up
    to its own position that ``attention_mask`` does not mark as padding. None when there is no cache
    and every token is real (then SDPA's fast causal path)."""
    if past == 0 and (attention_mask is None or bool(attention_mask.all())):
        return None
    position = torch.arange(t, device=device)[:, None] + past
    key = torch.arange(past + t, device=device)[None, :]
    mask = (key <= position)[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]
    # A padded query with no visible key would give NaN rows; let it see itself (its output is ignored).
    return mask | (key == position)[None, None]


class BaiChuanModel(BaiChuanPreTrainedModel):
    def __init__(self, config: BaiChuanConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(BaiChuanDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = BaiChuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False  # flipped by gradient_checkpointing_enable()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache=None) -> torch.Tensor:
        """The last hidden states; ``cache`` (a transformers ``Cache``) holds the earlier positions' keys
        and values and receives this call's."""
        b, t = input_ids.shape
        h = self.embed_tokens(input_ids)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).unsqueeze(0)
        cfg = self.config
        cos, sin = rotary_cos_sin(position_ids, cfg.hidden_size // cfg.num_attention_heads, cfg.rope_theta, h.dtype)
        mask = _attention_mask(attention_mask, t, past, input_ids.device)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # transformers sets _gradient_checkpointing_func (torch checkpoint with the user's kwargs).
                h = self._gradient_checkpointing_func(layer.__call__, h, cos, sin, mask)
            else:
                h = layer(h, cos, sin, mask, cache)
        return self.norm(h)


class BaiChuanForCausalLM(BaiChuanPreTrainedModel, GenerationMixin):
    """Baichuan-7B with its (untied) language-model head; ``forward`` returns ``.loss`` and ``.logits``
    (and the KV cache when ``use_cache``); ``generate()`` works."""

    def __init__(self, config: BaiChuanConfig):
        super().__init__(config)
        self.model = BaiChuanModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                cache=None, past_key_values=None, use_cache: bool | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        """``labels`` are the input ids (-100 where ignored); the shift to next-token targets happens here.

        ``cache`` (transformers 5; ``past_key_values`` in 4.x) continues from earlier positions; with
        ``use_cache`` and no cache a new ``DynamicCache`` is returned. ``**kwargs`` absorbs what trainers
        and ``generate()`` pass along (``return_dict``, ``num_items_in_batch``...).
        """
        cache = cache if cache is not None else past_key_values
        if cache is None and (use_cache if use_cache is not None else self.config.use_cache):
            cache = _new_cache(self.config)
        hidden = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            # fp32 for the softmax over 64000 classes, as transformers' own causal-LM loss does.
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})


def _new_cache(config: BaiChuanConfig) -> DynamicCache:
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()
