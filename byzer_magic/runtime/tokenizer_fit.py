"""Does the tokenizer fit the model? Checked in the kernel before launch, in milliseconds, instead of
after the whole corpus has been tokenised (and then again on every retry).

A token id ``>= vocab_size`` would index past the model's embedding; an EOS or BOS id outside it would
too (EOS ends every document in the token store). A tokenizer smaller than the model's vocabulary is
fine (embeddings are often padded). A model config whose ``eos_token_id`` differs from the tokenizer's
is a note: generation would stop on the config's id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from byzer_magic.errors import ByzerError, DeterministicFailure


class TokenizerMismatch(DeterministicFailure):
    """The tokenizer's ids do not fit the model's vocabulary."""


def model_vocabulary(model: Any, *, model_type: str | None = None) -> dict:
    """``{"vocab_size", "eos_token_id", "bos_token_id", "source"}`` of a model given as a transformers
    config or model, a model folder (its config.json), a ``modelConfig`` dict (with ``model_type``, the
    type's defaults fill what it leaves out) or a bare vocabulary size."""
    if isinstance(model, bool):
        raise TypeError("model must be a config, a model, a folder, a dict or a vocabulary size")
    if isinstance(model, int):
        return {"vocab_size": model, "eos_token_id": None, "bos_token_id": None, "source": "the model"}
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        config_file = path / "config.json" if path.is_dir() else path
        try:
            values = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise ByzerError(f"cannot read the model's config {config_file}: {err}") from None
        return _pick(values, f"{config_file}")
    config = getattr(model, "config", model)
    if isinstance(config, dict):
        values = dict(config)
        if model_type and "vocab_size" not in values:
            from byzer_magic.runtime.models import registry  # noqa: PLC0415

            family = registry._resolve(model_type)
            defaults = family.config_class(**family.defaults)
            values = {key: getattr(defaults, key, None) for key in ("vocab_size", "eos_token_id", "bos_token_id")
                      } | values
        return _pick(values, f"modelConfig ({model_type})" if model_type else "modelConfig")
    return _pick({key: getattr(config, key, None) for key in ("vocab_size", "eos_token_id", "bos_token_id")},
                 f"the {type(config).__name__}")


def _pick(values: dict, source: str) -> dict:
    size = values.get("vocab_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ByzerError(f"{source} has no valid vocab_size (got {size!r})")
    return {"vocab_size": size, "eos_token_id": values.get("eos_token_id"),
            "bos_token_id": values.get("bos_token_id"), "source": source}


def _tokenizer_ids(tokenizer: Any) -> tuple[int, int | None, int | None]:
    """(vocabulary size, EOS id, BOS id) of runtime/tokenizer.py's ``Tokenizer`` or a transformers one."""
    if hasattr(tokenizer, "eos_id"):
        return int(tokenizer.vocab_size), tokenizer.eos_id, tokenizer.bos_id
    return len(tokenizer), getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "bos_token_id", None)


def check_tokenizer_fits(tokenizer: Any, model: Any, *, model_type: str | None = None,
                         tokenizer_path: str | None = None) -> list[str]:
    """Raise ``TokenizerMismatch`` when the tokenizer's ids do not fit the model (see the module's
    docstring); return notes for what fits but differs. ``model``: see ``model_vocabulary``."""
    vocab = model_vocabulary(model, model_type=model_type)
    size, eos, bos = _tokenizer_ids(tokenizer)
    where = tokenizer_path or str(getattr(tokenizer, "path", "") or "the tokenizer")
    limit, source = vocab["vocab_size"], vocab["source"]
    if size > limit:
        raise TokenizerMismatch(
            f"the tokenizer at {where} has {size:,} tokens but {source} has vocab_size {limit:,}: ids from "
            f"{limit:,} up would index past the model's embedding. Use the model's own tokenizer, or (from "
            f"scratch) set modelConfig's vocab_size to {size} or more")
    if eos is None:
        raise TokenizerMismatch(f"the tokenizer at {where} has no end-of-sequence token (documents are "
                                f"separated by it)")
    for name, token_id in (("EOS", eos), ("BOS", bos)):
        if token_id is not None and not 0 <= int(token_id) < limit:
            raise TokenizerMismatch(f"the tokenizer at {where} has {name} id {token_id}, outside {source}'s "
                                    f"vocabulary of {limit:,} (ids 0 to {limit - 1:,})")
    notes = []
    model_eos = vocab["eos_token_id"]
    model_eos = model_eos[0] if isinstance(model_eos, list) and model_eos else model_eos
    if isinstance(model_eos, int) and model_eos != eos:
        notes.append(f"{source} says eos_token_id={model_eos} but the tokenizer's EOS is {eos}: the model "
                     f"learns to end documents with {eos}; generation stops on the config's id")
    return notes
