"""Long documents encoded fast, and exactly as a whole-text encoding would.

SentencePiece's time per token grows with the input's length (a 1 MB document encodes about 3x slower
per token than 4 kB pieces of it, docs/BENCHMARKS.md). A document longer than ``SEGMENT_FROM``
characters is therefore encoded in segments cut after a line end that a non-space character follows,
about every ``SEGMENT`` characters, and their ids are joined. That is used only where it gives the same
ids as encoding the whole text: checked once per tokenizer on the probe texts below, with SentencePiece's
dummy prefix turned off for the segments after the first when the model adds one (Llama's tokenizers
do). A tokenizer for which neither is exact encodes every document whole.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

SEGMENT_FROM = 1 << 16  # characters
SEGMENT = 1 << 14
CALL_CHARS = 1 << 20  # characters per tokenizer call: bounds the Python ints held at once
Encode = Callable[[list[str]], list]  # each text's ids: a list of ints or an int array

_BOUNDARY = re.compile(r"\n(?=\S)")
_PROBES = (
    "def f(x):\n    return x + 1\nclass A:\n  pass\n\n\nz = [1, 2]  # done\n#!\n",
    "第一行\n第二行，中文。\nthree  four\n5678 9\n'quoted'\n\"double\"\n(\n)\n",
    "héllo wörld\n😀 emoji\nTabs\tafter\n\tindented\r\nwindows line\r\n-dash\n_under\n.dot\n",
)


def line_segments(text: str) -> list[str]:
    """``text`` cut after a line end followed by a non-space character, at or past every ``SEGMENT``
    characters (whole if it is at most ``SEGMENT_FROM`` long); the segments' concatenation is ``text``."""
    if len(text) <= SEGMENT_FROM:
        return [text]
    out, start = [], 0
    while start < len(text):
        found = _BOUNDARY.search(text, start + SEGMENT)
        end = found.end() if found else len(text)
        out.append(text[start:end])
        start = end
    return out


def continuation_encoder(encode: Encode, kind: str, backend) -> Encode | None:
    """How to encode the segments after a document's first so that the joined ids equal ``encode`` of
    the whole text, or None when no way is exact for this tokenizer (``kind``/``backend``: runtime/tokenizer.py)."""
    candidates = [encode]
    if kind == "sentencepiece":
        rest = _without_dummy_prefix(backend)
        if rest is not None:
            candidates.append(sentencepiece_encoder(rest))
    for candidate in candidates:
        if all(_exact_on(probe, encode, candidate) for probe in _PROBES):
            return candidate
    return None


def sentencepiece_encoder(processor) -> Encode:
    """``processor``'s encode, a call per text (its list form runs a thread pool, ~15% slower), each text's
    ids an int32 array where this SentencePiece returns one (``out_type="numpy"``, no Python int per
    token: ~10% less CPU than lists), else a list."""
    try:
        processor.encode("a", out_type="numpy")
        out_type = "numpy"
    except (ValueError, TypeError, RuntimeError):  # an older SentencePiece
        out_type = int
    return lambda texts: [processor.encode(text, out_type=out_type) for text in texts]


def encode_flat(texts: list[str], encode: Encode, rest: Encode | None, *, eos: int, dtype,
                call_chars: int = CALL_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """The texts' ids end to end, ``eos`` after each, as one array of ``dtype``, and each text's length
    (its ``eos`` included). Short texts (all of them when ``rest`` is None) by ``encode``, long ones as
    their first segment by ``encode`` and the others by ``rest``. The tokenizer is called on about
    ``call_chars`` characters of segments at a time, in the texts' order, and each list of Python ints it
    returns becomes an array at once, so that a 64 MB piece never exists as one list (~36 bytes a token);
    the smaller the call, the likelier its ints are still in the CPU's cache (``SEGMENT``: ~5% faster
    than 1M characters with SentencePiece, whose calls are a text each anyway)."""
    lengths = np.zeros(len(texts), np.int64)
    arrays: list[np.ndarray] = []
    batch: list[tuple[int, bool, bool, str]] = []  # (text, first segment, last segment, segment)
    end_of_text = np.array([eos], dtype=dtype)

    def flush() -> None:
        firsts = iter(encode([seg for _, first, _, seg in batch if first]))
        rests = iter(rest([seg for _, first, _, seg in batch if not first]) if rest is not None else ())
        for doc, first, last, _ in batch:
            ids = next(firsts) if first else next(rests)
            arrays.append(ids.astype(dtype) if isinstance(ids, np.ndarray)
                          else np.fromiter(ids, dtype=dtype, count=len(ids)))
            if last:
                arrays.append(end_of_text)
            lengths[doc] += len(ids) + last
        batch.clear()

    held = 0
    for doc, text in enumerate(texts):
        segments = line_segments(text) if rest is not None else [text]
        for index, segment in enumerate(segments):
            batch.append((doc, index == 0, index == len(segments) - 1, segment))
            held += len(segment)
            if held >= call_chars:
                flush()
                held = 0
    if batch:
        flush()
    return np.concatenate(arrays) if arrays else np.empty(0, dtype), lengths


def encode_documents(texts: list[str], encode: Encode, rest: Encode | None,
                     call_chars: int = CALL_CHARS) -> list[np.ndarray]:
    """Each text's ids as an int32 array (``encode_flat``'s, cut at the texts' ends)."""
    flat, lengths = encode_flat(texts, encode, rest, eos=0, dtype=np.int32, call_chars=call_chars)
    ends = np.cumsum(lengths)
    return [flat[end - n:end - 1] for end, n in zip(ends.tolist(), lengths.tolist())]


def _exact_on(probe: str, encode: Encode, rest: Encode) -> bool:
    whole = list(encode([probe])[0])
    cuts = [m.end() for m in _BOUNDARY.finditer(probe)]
    pieces = [probe[a:b] for a, b in zip([0] + cuts, cuts + [len(probe)]) if b > a]
    if len(pieces) < 2:
        return True
    joined = list(encode(pieces[:1])[0]) + [i for ids in rest(pieces[1:]) for i in ids]
    return joined == whole


def _without_dummy_prefix(processor):
    """A copy of a SentencePiece processor that does not add its dummy prefix (None if it adds none)."""
    import sentencepiece  # noqa: PLC0415
    from sentencepiece import sentencepiece_model_pb2  # noqa: PLC0415

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(processor.serialized_model_proto())
    if not model.normalizer_spec.add_dummy_prefix:
        return None
    model.normalizer_spec.add_dummy_prefix = False
    return sentencepiece.SentencePieceProcessor(model_proto=model.SerializeToString())
