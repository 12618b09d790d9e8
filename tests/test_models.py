"""BaiChuanForCausalLM against transformers' Llama with the same weights, the Auto-class round trip, and
build_model / load_model for each kind of model type."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.models import (MODEL_TYPES, BaiChuanConfig, BaiChuanForCausalLM, build_model, load_model,
                                        model_config_keys)
from tests.support.tiny import make_tiny_llama_dir, tiny_model_config, train_sentencepiece

VOCAB = 512


@pytest.fixture
def baichuan():
    torch.manual_seed(0)
    return build_model("sfft/baichuan", tiny_model_config("sfft/baichuan", VOCAB)).eval()


def llama_twin(model: BaiChuanForCausalLM) -> LlamaForCausalLM:
    """transformers' Llama holding the same weights, W_pack split into q/k/v."""
    cfg = model.config
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
        attn_implementation="sdpa")).eval()
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("W_pack.weight"):
            q, k, v = tensor.chunk(3, dim=0)
            prefix = name.removesuffix("W_pack.weight")
            state.update({f"{prefix}q_proj.weight": q, f"{prefix}k_proj.weight": k, f"{prefix}v_proj.weight": v})
        else:
            state[name] = tensor
    missing, unexpected = llama.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in key for key in missing)
    return llama


def batch(seed: int = 1, b: int = 2, t: int = 48) -> torch.Tensor:
    return torch.randint(3, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def test_module_names_are_baichuans(baichuan):
    names = set(baichuan.state_dict())
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.1.self_attn.W_pack.weight", "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight", "model.layers.1.input_layernorm.weight",
            "model.layers.1.post_attention_layernorm.weight"} <= names
    assert baichuan.model.layers[0].self_attn.W_pack.weight.shape == (3 * 64, 64)
    assert baichuan.model.layers[0].self_attn.W_pack.bias is None
    assert baichuan.lm_head.weight.data_ptr() != baichuan.model.embed_tokens.weight.data_ptr()


def test_defaults_are_baichuan_7b():
    cfg = BaiChuanConfig()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
            cfg.num_attention_heads, cfg.max_position_embeddings, cfg.rms_norm_eps) == \
           (64000, 4096, 11008, 32, 32, 4096, 1e-6)
    assert cfg.tie_word_embeddings is False


def test_same_logits_and_loss_as_llama(baichuan):
    llama = llama_twin(baichuan)
    ids = batch()
    with torch.no_grad():
        ours, theirs = baichuan(ids, labels=ids), llama(ids, labels=ids)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    # ignore_index -100: the loss of a half-masked batch is the mean over the rest.
    labels = ids.clone()
    labels[:, :20] = -100
    with torch.no_grad():
        torch.testing.assert_close(baichuan(ids, labels=labels).loss, llama(ids, labels=labels).loss,
                                   atol=1e-5, rtol=1e-5)


def test_padding_mask_matches_llama(baichuan):
    llama = llama_twin(baichuan)
    ids, mask = batch(), torch.ones(2, 48, dtype=torch.long)
    mask[1, 30:] = 0  # right padding
    with torch.no_grad():
        ours = baichuan(ids, attention_mask=mask).logits
        theirs = llama(ids, attention_mask=mask).logits
    assert not ours.isnan().any()
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=1e-5, rtol=1e-5)


def test_generate_with_the_kv_cache_matches_llama(baichuan):
    """``generate()`` (our KV cache) gives the greedy tokens of transformers' Llama with the same
    weights, the same without the cache, and a left-padded row the tokens it gets alone."""
    llama = llama_twin(baichuan)
    ids, mask = batch(t=12), torch.ones(2, 12, dtype=torch.long)
    ids[1, :5], mask[1, :5] = 0, 0  # left padding, as batched generation uses
    for model in (baichuan, llama):
        model.generation_config.eos_token_id = None  # always 10 new tokens
    greedy = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ours = baichuan.generate(ids, attention_mask=mask, **greedy)
        assert ours.shape == (2, 22)
        assert torch.equal(ours, llama.generate(ids, attention_mask=mask, **greedy))
        assert torch.equal(ours, baichuan.generate(ids, attention_mask=mask, use_cache=False, **greedy))
        assert torch.equal(ours[1, 5:], baichuan.generate(ids[1:, 5:], **greedy)[0])


def test_save_and_open_with_auto_class(baichuan, tmp_path):
    baichuan.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ids = batch()
    for reloaded in (AutoModelForCausalLM.from_pretrained(tmp_path), load_model("sfft/baichuan", str(tmp_path))):
        assert isinstance(reloaded, BaiChuanForCausalLM)
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(ids).logits, baichuan(ids).logits, atol=0, rtol=0)


def test_load_baichuan_7b_style_folder(baichuan, tmp_path):
    """A folder as Baichuan ships it: pytorch_model.bin and a config.json whose auto_map names remote code
    that is not there. Our registered class loads it, no trust_remote_code needed."""
    torch.save(baichuan.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["BaiChuanForCausalLM"], "model_type": "baichuan",
        "auto_map": {"AutoConfig": "configuration_baichuan.BaiChuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"},
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu", "initializer_range": 0.02,
        "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.29.1", "use_cache": True,
        **tiny_model_config("sfft/baichuan", VOCAB)}))
    ids = batch()
    model = load_model("sfft/baichuan", str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, baichuan(ids).logits, atol=0, rtol=0)


def test_gradient_checkpointing_gives_same_gradients(baichuan):
    ids = batch(t=32)
    baichuan.train()
    baichuan(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in baichuan.parameters()]
    baichuan.zero_grad()
    # transformers 5 renamed the switch; both set the checkpoint function on modules with `gradient_checkpointing`.
    enable = getattr(baichuan, "activation_checkpointing_enable", None) or baichuan.gradient_checkpointing_enable
    enable()
    calls = []
    checkpoint = baichuan.model._gradient_checkpointing_func
    baichuan.model._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or checkpoint(*a, **k)
    baichuan(ids, labels=ids).loss.backward()
    assert len(calls) == baichuan.config.num_hidden_layers
    for expected, p in zip(plain, baichuan.parameters()):
        torch.testing.assert_close(p.grad, expected, atol=1e-6, rtol=1e-5)


def test_loss_decreases(baichuan):
    ids = batch(b=2, t=32)
    baichuan.train()
    optimizer = torch.optim.AdamW(baichuan.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = baichuan(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


@pytest.mark.parametrize("model_type, cls_name", [("sfft/llama2", "LlamaForCausalLM"),
                                                  ("sfft/baichuan", "BaiChuanForCausalLM"),
                                                  ("hf/qwen2", "Qwen2ForCausalLM"),
                                                  ("gpt2", "GPT2LMHeadModel")])
def test_build_model(model_type, cls_name):
    model = build_model(model_type, tiny_model_config(model_type, VOCAB))
    assert type(model).__name__ == cls_name
    assert model.config.vocab_size == VOCAB
    ids = batch(t=16)
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_build_model_dtype_and_family_defaults():
    model = build_model("sfft/llama2", tiny_model_config("sfft/llama2", VOCAB) | {"rope_theta": 5e5},
                        dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert model.config.rope_parameters["rope_theta"] == 5e5
    llama_keys = tiny_model_config("sfft/llama2") | {"num_key_value_heads": 4}
    assert build_model("sfft/llama2", {k: v for k, v in llama_keys.items() if k != "max_position_embeddings"}) \
        .config.max_position_embeddings == 4096  # LLaMA-2's context, not LlamaConfig's LLaMA-1 default


def test_model_config_keys():
    assert set(MODEL_TYPES) == {"sfft/llama2", "sfft/baichuan"}
    assert {"hidden_size", "num_hidden_layers", "num_key_value_heads", "rope_theta"} <= \
        set(model_config_keys("sfft/llama2"))
    keys = model_config_keys("sfft/baichuan")
    assert {"vocab_size", "hidden_size", "intermediate_size", "rms_norm_eps"} <= set(keys)
    assert "num_key_value_heads" not in keys and "return_dict" not in keys


def test_load_tiny_llama_folder(tmp_path):
    folder = make_tiny_llama_dir(tmp_path / "llama", train_sentencepiece(tmp_path / "sp"))
    model = load_model("sfft/llama2", str(folder), dtype=torch.bfloat16)
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == VOCAB


def test_errors(tmp_path):
    with pytest.raises(ByzerError, match='unknown model type "sfft/llama3" \\(did you mean "sfft/llama2"\\?\\)'):
        build_model("sfft/llama3")
    with pytest.raises(ByzerError, match="not a causal language model"):
        build_model("vit")
    with pytest.raises(ByzerError, match='"hidden_sise".*did you mean "hidden_size".*valid keys: .*vocab_size'):
        build_model("sfft/baichuan", {"hidden_sise": 64})
    with pytest.raises(ByzerError, match="bad modelConfig.*multiple"):
        build_model("sfft/baichuan", {"hidden_size": 65})
    with pytest.raises(ByzerError, match="unknown dtype"):
        build_model("sfft/baichuan", tiny_model_config("sfft/baichuan"), dtype="fp8")
    with pytest.raises(ByzerError, match="model folder not found"):
        load_model("sfft/llama2", str(tmp_path / "missing"))
    with pytest.raises(ByzerError, match="no config.json"):
        load_model("sfft/llama2", str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ByzerError, match="cannot load the model"):
        load_model("sfft/llama2", str(tmp_path))
