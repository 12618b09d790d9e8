"""runtime/tokenizer_fit.py on real tokenizers and model configs (no Ray)."""
from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig

from byzer_magic.errors import ByzerError, DeterministicFailure
from byzer_magic.runtime.tokenizer import load_tokenizer
from byzer_magic.runtime.tokenizer_fit import TokenizerMismatch, check_tokenizer_fits, model_vocabulary
from tests.support.tiny import make_tiny_llama_dir, train_sentencepiece


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_sentencepiece(tmp_path_factory.mktemp("tok"), vocab_size=512)  # unk 0, bos 1, eos 2


@pytest.fixture(scope="module")
def tokenizer(sp_model):
    return load_tokenizer(sp_model)


def test_a_tokenizer_that_fits_its_model_folder(tokenizer, sp_model, tmp_path):
    model_dir = make_tiny_llama_dir(tmp_path / "llama", sp_model)
    assert check_tokenizer_fits(tokenizer, model_dir) == []
    assert check_tokenizer_fits(tokenizer, LlamaConfig(vocab_size=512, bos_token_id=1, eos_token_id=2)) == []
    assert check_tokenizer_fits(tokenizer, 4096) == []  # a larger (padded) vocabulary is fine


def test_a_tokenizer_larger_than_the_models_vocabulary(tokenizer, sp_model):
    with pytest.raises(TokenizerMismatch) as info:
        check_tokenizer_fits(tokenizer, {"vocab_size": 256}, tokenizer_path=str(sp_model))
    assert str(info.value).startswith(f"the tokenizer at {sp_model} has 512 tokens but modelConfig has "
                                      f"vocab_size 256: ids from 256 up would index past")
    assert "set modelConfig's vocab_size to 512 or more" in str(info.value)
    assert isinstance(info.value, DeterministicFailure)


def test_from_scratch_the_types_default_vocabulary_is_used(tokenizer):
    found = model_vocabulary({"hidden_size": 64}, model_type="sfft/llama2")
    assert found["vocab_size"] == 32000 and found["source"] == "modelConfig (sfft/llama2)"
    assert check_tokenizer_fits(tokenizer, {"hidden_size": 64}, model_type="sfft/llama2") == []


def test_eos_and_bos_outside_the_vocabulary(tokenizer):
    class Shifted:  # what a tokenizer with added special tokens past the base vocabulary reports
        vocab_size, eos_id, bos_id, path = 500, 511, 1, "added-tokens"

    with pytest.raises(TokenizerMismatch, match=r"has EOS id 511, outside the model's vocabulary of 510 "
                                                r"\(ids 0 to 509\)"):
        check_tokenizer_fits(Shifted(), 510)
    Shifted.eos_id, Shifted.bos_id = 2, 600
    with pytest.raises(TokenizerMismatch, match="BOS id 600"):
        check_tokenizer_fits(Shifted(), 510)
    Shifted.eos_id = None
    with pytest.raises(TokenizerMismatch, match="has no end-of-sequence token"):
        check_tokenizer_fits(Shifted(), 510)


def test_a_different_eos_in_the_config_is_a_note(tokenizer, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 512, "eos_token_id": [7, 2]}))
    notes = check_tokenizer_fits(tokenizer, tmp_path)
    assert len(notes) == 1 and "says eos_token_id=7 but the tokenizer's EOS is 2" in notes[0]


def test_a_transformers_tokenizer_and_bad_model_descriptions(tokenizer, sp_model, tmp_path):
    from transformers import AutoTokenizer

    hf_dir = tokenizer.save(tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    assert check_tokenizer_fits(hf, 512) == []
    with pytest.raises(TokenizerMismatch):
        check_tokenizer_fits(hf, 100)
    with pytest.raises(ByzerError, match="cannot read the model's config"):
        check_tokenizer_fits(tokenizer, tmp_path / "nowhere")
    with pytest.raises(ByzerError, match="has no valid vocab_size"):
        check_tokenizer_fits(tokenizer, {"vocab_size": "big"})
