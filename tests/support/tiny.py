"""Tiny real things for tests: text from the standard library, a SentencePiece tokenizer trained on it,
and miniature LLaMA / Baichuan models. Everything is built locally in a few seconds; nothing is cached
outside the folder a test gives."""
from __future__ import annotations

import json
from pathlib import Path

TINY_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "max_position_embeddings": 256}


def stdlib_text_files(n: int = 20) -> list[Path]:
    """``n`` .py files of the Python standard library (2-50 kB each), sorted by name: real text on every machine."""
    stdlib = Path(json.__file__).parent.parent
    files = sorted(p for p in stdlib.glob("*.py")
                   if not p.name.startswith("_") and 2_000 < p.stat().st_size < 50_000)
    return files[:n]


def train_sentencepiece(out_dir: Path, vocab_size: int = 512) -> Path:
    """A LLaMA-style SentencePiece BPE model (unk=0, bos=1, eos=2, no pad, byte fallback) trained on the
    standard library files; returns ``out_dir/tokenizer.model``."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The normaliser settings are LLaMA's: code keeps its whitespace, digits split one by one.
    spm.SentencePieceTrainer.train(
        input=",".join(str(p) for p in stdlib_text_files(40)), model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size, model_type="bpe", byte_fallback=True, character_coverage=0.9999,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True,
        max_sentence_length=1 << 16, num_threads=2, minloglevel=2)
    return out_dir / "tokenizer.model"


def tiny_model_config(model_type: str, vocab_size: int = 512) -> dict:
    """Tiny sizes (hidden 64, 2 layers, 4 heads) as a ``model_config`` for ``build_model(model_type, ...)``."""
    name = model_type.lower().removeprefix("hf/")
    if name in ("sfft/baichuan", "baichuan"):  # Baichuan has no grouped-query attention
        return {"vocab_size": vocab_size, **TINY_SIZES}
    if name in ("sfft/llama2", "llama", "qwen2", "mistral"):
        return {"vocab_size": vocab_size, **TINY_SIZES, "num_key_value_heads": 2}
    if name == "gpt2":
        return {"vocab_size": vocab_size, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}
    raise ValueError(f"no tiny sizes for {model_type}")


def make_tiny_llama_dir(out_dir: Path, tokenizer_model: Path, **overrides) -> Path:
    """A miniature Llama-2-7b-hf: a random tiny LlamaForCausalLM (safetensors) and its tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from byzer_magic.runtime.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_model)
    config = LlamaConfig(**{**tiny_model_config("sfft/llama2", tokenizer.vocab_size),
                            "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, **overrides})
    with torch.random.fork_rng():  # deterministic weights without disturbing the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)  # safetensors is save_pretrained's default
    tokenizer.save(out_dir)
    return out_dir
