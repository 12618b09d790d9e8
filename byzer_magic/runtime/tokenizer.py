"""Load a tokenizer from what users point at, encode text fast, and write it into an exported model folder.

Accepted: a SentencePiece ``tokenizer.model`` file (Byzer's ``tokenizer_path``), a folder that holds one,
or a Hugging Face tokenizer folder (``tokenizer.json``, or anything ``AutoTokenizer`` reads). The object
is sent to Ray Data tasks: it pickles as its path and reloads the backend lazily in each process.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from byzer_magic.errors import ByzerError
from byzer_magic.runtime import long_documents

# What a Hugging Face folder may carry for its tokenizer; copied verbatim so the export behaves like the source.
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                       "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
                       "chat_template.json")
_EOS_GUESSES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>")


class Tokenizer:
    """``encode_batch`` / ``encode_documents`` (no special tokens), ``eos_id``, ``bos_id``, ``vocab_size``, ``save``.

    ``kind`` is ``sentencepiece`` (a .model file), ``tokenizers`` (a tokenizer.json) or ``auto``
    (any other folder, through transformers' AutoTokenizer).
    """

    def __init__(self, path: Path, kind: str):
        self.path = path
        self.kind = kind
        self._backend: Any = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "kind": self.kind}  # the backend is rebuilt where it is used

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["kind"])

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, kind={self.kind!r})"

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = _open_backend(self.path, self.kind)
        return self._backend

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids for each text, without BOS/EOS: packing decides where those go."""
        if not texts:
            return []
        if self.kind == "sentencepiece":  # a call per text: its list form runs a thread pool, ~15% slower
            return [self.backend.encode(text, out_type=int) for text in texts]
        if self.kind == "tokenizers":
            return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]
        return self.backend(list(texts), add_special_tokens=False)["input_ids"]

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """``encode_batch`` for training documents, as int32 arrays: long ones in segments where that gives
        the same ids (runtime/long_documents.py), several times faster with SentencePiece."""
        return long_documents.encode_documents(texts, self._encode_ids, self._continuation)

    def encode_flat(self, texts: list[str], dtype) -> tuple[np.ndarray, np.ndarray]:
        """``encode_documents``' ids end to end with ``eos_id`` after each, as one ``dtype`` array, and each
        document's length with its end-of-text (the token store's form: runtime/token_store.py)."""
        calls = long_documents.SEGMENT if self.kind == "sentencepiece" else long_documents.CALL_CHARS
        return long_documents.encode_flat(texts, self._encode_ids, self._continuation, eos=self.eos_id,
                                          dtype=dtype, call_chars=calls)

    @functools.cached_property  # probed once per process (the object pickles as its path)
    def _continuation(self):
        return long_documents.continuation_encoder(self._encode_ids, self.kind, self.backend)

    @functools.cached_property
    def _encode_ids(self) -> long_documents.Encode:
        """``encode_batch`` for the token store: with SentencePiece, arrays instead of lists where it can."""
        if self.kind == "sentencepiece":
            return long_documents.sentencepiece_encoder(self.backend)
        return self.encode_batch

    @property
    def vocab_size(self) -> int:
        if self.kind == "sentencepiece":
            return self.backend.get_piece_size()
        if self.kind == "tokenizers":
            return self.backend.get_vocab_size(with_added_tokens=True)
        return len(self.backend)

    @functools.cached_property  # read per document by the tokenising tasks: look it up once
    def eos_id(self) -> int:
        eos = self._special_id("eos")
        if eos is None:
            raise ByzerError(f"the tokenizer at {self.path} has no end-of-sequence token")
        return eos

    @functools.cached_property
    def bos_id(self) -> int | None:
        return self._special_id("bos")

    def _special_id(self, which: str) -> int | None:
        if self.kind == "sentencepiece":
            token_id = self.backend.eos_id() if which == "eos" else self.backend.bos_id()
            return token_id if token_id >= 0 else None
        if self.kind == "auto":
            return getattr(self.backend, f"{which}_token_id")
        token = _configured_token(self.path, f"{which}_token")
        candidates = [token] if token else (list(_EOS_GUESSES) if which == "eos" else ["<s>"])
        for candidate in candidates:
            token_id = self.backend.token_to_id(candidate)
            if token_id is not None:
                return token_id
        return None

    def save(self, out_dir: str | Path) -> Path:
        """Write the tokenizer into ``out_dir`` so that ``AutoTokenizer.from_pretrained(out_dir)`` opens it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        source = self.path.parent if self.path.is_file() else self.path
        if any((source / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")):
            # A Hugging Face folder: its own files (and remote code) describe it best.
            for name in _HF_TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, out / name)
            for code in source.glob("tokenization_*.py"):
                shutil.copyfile(code, out / code.name)
        else:
            _write_hf_from_sentencepiece(self.path, self.backend, out)
        return out


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``Tokenizer`` for a .model file, a folder holding tokenizer.model, or a Hugging Face folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ByzerError(f"tokenizer not found: {p}")
    if p.is_file():
        candidates = [(p, "tokenizers" if p.suffix == ".json" else "sentencepiece")]
    else:
        candidates = [(p / "tokenizer.model", "sentencepiece"), (p / "tokenizer.json", "tokenizers")]
        candidates = [(c, kind) for c, kind in candidates if c.is_file()]
        if not candidates and (p / "tokenizer_config.json").is_file():
            candidates = [(p, "auto")]
    if not candidates:
        raise ByzerError(f"no tokenizer in {p}: expected tokenizer.model (SentencePiece), tokenizer.json "
                         "or tokenizer_config.json")
    errors = []
    # A folder may hold a tokenizer.model that is not SentencePiece (tiktoken); then tokenizer.json decides.
    for candidate, kind in candidates:
        tokenizer = Tokenizer(candidate, kind)
        try:
            tokenizer.backend
        except Exception as err:  # each backend raises its own types for an unreadable file
            errors.append(f"{candidate.name}: {err}")
            continue
        return tokenizer
    raise ByzerError(f"cannot read the tokenizer at {p}: {'; '.join(errors)}")


def _open_backend(path: Path, kind: str) -> Any:
    if kind == "sentencepiece":
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    if kind == "tokenizers":
        from tokenizers import Tokenizer as HFTokenizer

        return HFTokenizer.from_file(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _configured_token(path: Path, key: str) -> str | None:
    """``eos_token``/``bos_token`` as a folder's tokenizer_config.json or special_tokens_map.json names it."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = path.parent / name
        if file.is_file():
            token = json.loads(file.read_text()).get(key)
            if isinstance(token, dict):
                token = token.get("content")
            if token:
                return token
    return None


def _write_hf_from_sentencepiece(model_file: Path, sp: Any, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json that encode exactly as SentencePiece does, plus tokenizer.model.

    Built here rather than by transformers' LlamaTokenizer, whose Metaspace pre-tokenizer drops the dummy
    prefix of text that starts with a space (SentencePiece keeps it); with a plain PreTrainedTokenizerFast
    class AutoTokenizer uses our tokenizer.json as written.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, decoders, normalizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE, Unigram

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    pieces = [(p.piece, p.score) for p in proto.pieces]
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    unk = sp.id_to_piece(sp.unk_id())
    if trainer.model_type == 2:  # BPE: merges ranked by the merged piece's score, as SentencePiece applies them
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
        ranked = sorted((-score, i, piece[:k], piece[k:]) for piece, (score, i) in normal.items()
                        for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal)
        model = BPE(vocab={piece: i for i, (piece, _) in enumerate(pieces)},
                    merges=[(left, right) for _, _, left, right in ranked],
                    unk_token=unk, fuse_unk=True, byte_fallback=trainer.byte_fallback)
    elif trainer.model_type == 1:
        model = Unigram(pieces, unk_id=sp.unk_id(), byte_fallback=trainer.byte_fallback)
    else:
        raise ByzerError(f"{model_file}: only BPE and unigram SentencePiece models can be exported")
    tok = HFTokenizer(model)
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    specials = {"unk_token": unk}
    tok.add_special_tokens([AddedToken(unk, special=True, normalized=False)])
    for key, token_id in (("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()), ("pad_token", sp.pad_id())):
        if token_id >= 0:
            specials[key] = sp.id_to_piece(token_id)
            tok.add_special_tokens([AddedToken(specials[key], special=True, normalized=False)])
    if "bos_token" in specials:  # LLaMA's convention: BOS before each sequence when special tokens are on
        bos = (specials["bos_token"], sp.bos_id())
        tok.post_processor = processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B",
                                                           special_tokens=[bos])
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": 1 << 30, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if model_file.resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(model_file, out / "tokenizer.model")


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str) -> Tokenizer:
    """``load_tokenizer`` once per process (the tokenising tasks and the workers call it per batch)."""
    return load_tokenizer(path)
