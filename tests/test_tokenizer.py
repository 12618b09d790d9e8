"""load_tokenizer on the three shapes users bring (a .model file, a folder with one, a Hugging Face folder),
checked against SentencePiece itself and against AutoTokenizer on the folder that save() writes."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
import sentencepiece as spm

from byzer_magic.errors import ByzerError
from byzer_magic.runtime.tokenizer import load_tokenizer
from tests.support.tiny import stdlib_text_files, train_sentencepiece

# Files the tokenizer was not trained on, plus the cases where HF ports of SentencePiece usually drift:
# leading spaces (the dummy prefix), runs of whitespace, characters only byte fallback can spell.
TEXTS = [p.read_text() for p in stdlib_text_files(45)[40:]] + [
    "  two leading spaces", " x", "", "tabs\tand\n\nnewlines  ", "héllo wörld 日本語 😀", "12345 67"]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_sentencepiece(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def expected(sp_model):
    return spm.SentencePieceProcessor(model_file=str(sp_model)).encode(TEXTS, out_type=int)


@pytest.fixture(scope="module")
def hf_dir(sp_model, tmp_path_factory):
    return load_tokenizer(sp_model).save(tmp_path_factory.mktemp("hf"))


def test_model_file(sp_model, expected):
    tok = load_tokenizer(str(sp_model))
    assert tok.kind == "sentencepiece"
    assert tok.encode_batch(TEXTS) == expected
    assert (tok.eos_id, tok.bos_id, tok.vocab_size) == (2, 1, 512)
    assert tok.encode_batch([]) == []


def test_folder_holding_tokenizer_model(sp_model, expected, tmp_path):
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "sentencepiece"
    assert tok.encode_batch(TEXTS) == expected


def test_hf_folder_without_sentencepiece(hf_dir, expected, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, tmp_path / name)
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "tokenizers"
    assert tok.encode_batch(TEXTS) == expected
    assert (tok.eos_id, tok.bos_id, tok.vocab_size) == (2, 1, 512)


def test_autotokenizer_opens_saved_folder(hf_dir, expected):
    from transformers import AutoTokenizer

    assert sorted(p.name for p in hf_dir.iterdir()) == ["tokenizer.json", "tokenizer.model",
                                                        "tokenizer_config.json"]
    auto = AutoTokenizer.from_pretrained(hf_dir)
    assert [auto.encode(t, add_special_tokens=False) for t in TEXTS] == expected
    assert (auto.eos_token_id, auto.bos_token_id, auto.unk_token_id) == (2, 1, 0)
    # LLaMA's convention for inference: BOS first, no EOS.
    assert auto("def f(): pass")["input_ids"] == [1] + auto.encode("def f(): pass", add_special_tokens=False)
    assert [auto.decode(ids) for ids in expected] == TEXTS


def test_save_of_hf_folder_copies_it(hf_dir, tmp_path):
    out = load_tokenizer(hf_dir).save(tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        assert (out / name).read_bytes() == (hf_dir / name).read_bytes()


def test_autotokenizer_folder(tmp_path):
    """A folder with neither tokenizer.model nor tokenizer.json (GPT-2 style vocab.json + merges.txt)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(p) for p in stdlib_text_files(5)], vocab_size=400, special_tokens=["<|endoftext|>"],
              show_progress=False)
    bpe.save_model(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "auto"
    assert tok.eos_id == 0
    ids = tok.encode_batch(["def f(x):\n    return x", "import os"])
    assert ids == [bpe.encode(t).ids for t in ["def f(x):\n    return x", "import os"]]
    out = tok.save(tmp_path / "out")
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}


def test_pickles_as_its_path(sp_model, hf_dir, expected):
    for path in (sp_model, hf_dir / "tokenizer.json"):
        tok = load_tokenizer(path)
        tok.encode_batch(["warm the backend"])
        data = pickle.dumps(tok)
        assert len(data) < 1000  # the path, not the model
        assert pickle.loads(data).encode_batch(TEXTS) == expected


def test_errors(tmp_path):
    with pytest.raises(ByzerError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing" / "tokenizer.model")
    with pytest.raises(ByzerError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ByzerError, match="cannot read the tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.model")



def _nfkc_model(out_dir):
    """SentencePiece's defaults (nmt_nfkc, whitespace runs collapsed), unlike the Llama-style test model."""
    spm.SentencePieceTrainer.train(input=",".join(str(p) for p in stdlib_text_files(10)),
                                   model_prefix=str(out_dir / "nfkc"), vocab_size=300, minloglevel=2)
    return out_dir / "nfkc.model"


@pytest.mark.parametrize("shape", ["llama-style", "nmt_nfkc", "hf-folder"])
def test_long_documents_are_encoded_in_segments_with_the_whole_texts_ids(shape, sp_model, hf_dir, tmp_path):
    from byzer_magic.runtime import long_documents

    path = {"llama-style": sp_model, "nmt_nfkc": _nfkc_model(tmp_path), "hf-folder": hf_dir}[shape]
    tok = load_tokenizer(path)
    assert tok._continuation is not None  # segmenting is exact for all three: it is used
    long = "".join(TEXTS) * 6
    segments = long_documents.line_segments(long)
    assert "".join(segments) == long and len(segments) > 5
    assert all(len(s) >= long_documents.SEGMENT and s.endswith("\n") for s in segments[:-1])
    ids = tok.encode_documents(["a", long, "", TEXTS[0]])
    assert [x.tolist() for x in ids] == tok.encode_batch(["a", long, "", TEXTS[0]])  # whole-text encoding's ids
    small = long_documents.encode_documents(["a", long, "", TEXTS[0]], tok.encode_batch, tok._continuation,
                                            call_chars=1000)  # many calls of a few segments each
    assert [x.tolist() for x in small] == [x.tolist() for x in ids] and all(x.dtype == "int32" for x in small)


def test_sentencepiece_ids_come_as_arrays_and_lists_alike(sp_model):
    """long_documents.sentencepiece_encoder: int32 arrays where this SentencePiece returns them, lists
    where an older one refuses out_type="numpy"; the token store's ids the same either way."""
    import numpy as np

    from byzer_magic.runtime import long_documents

    tok = load_tokenizer(sp_model)

    class Older:  # SentencePiece before out_type="numpy"
        def encode(self, text, out_type):
            if out_type == "numpy":
                raise ValueError(f"Invalid return_type: {out_type}")
            return tok.backend.encode(text, out_type=out_type)

    arrays, lists = long_documents.sentencepiece_encoder(tok.backend), long_documents.sentencepiece_encoder(Older())
    assert all(isinstance(ids, np.ndarray) and ids.dtype == np.int32 for ids in arrays(TEXTS))
    assert all(isinstance(ids, list) for ids in lists(TEXTS))
    assert [ids.tolist() for ids in arrays(TEXTS)] == lists(TEXTS) == tok.encode_batch(TEXTS)
    long = "".join(TEXTS) * 6
    flat, lengths = tok.encode_flat([long, TEXTS[0]], np.uint16)
    older = long_documents.encode_flat([long, TEXTS[0]], lists, tok._continuation, eos=tok.eos_id,
                                       dtype=np.uint16, call_chars=long_documents.SEGMENT)
    assert np.array_equal(flat, older[0]) and np.array_equal(lengths, older[1]) and flat.dtype == np.uint16


def test_a_tokenizer_that_segments_would_change_encodes_whole(sp_model):
    from byzer_magic.runtime import long_documents

    def merges_across_lines(texts):  # a stand-in whose ids depend on the text before a line end
        return [[len(t)] for t in texts]

    assert long_documents.continuation_encoder(merges_across_lines, "tokenizers", None) is None
    long = "x\n" * long_documents.SEGMENT_FROM
    assert [x.tolist() for x in long_documents.encode_documents([long], merges_across_lines, None)] == [[len(long)]]
