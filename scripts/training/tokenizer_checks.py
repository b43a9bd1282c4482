"""Checks of a tokenizer against the text it will tokenize, and its fingerprint (a checkpoint records it)."""

import hashlib
import itertools
import warnings
from collections.abc import Iterable

from vanilla_transformer.scripts.training.errors import DataError, DataWarning


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, merges, normalisation, special tokens)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def check_tokenizer(tokenizer, texts: dict[str, Iterable[str]], fix: str, vocab_size: int | None = None,
                    sample: int = 2000) -> None:
    """Refuse a tokenizer that was not made for this text: one that turns half or more of the tokens of the first
    `sample` texts of any source into the unknown token (`DataError`); warn with the counts above 1%. With
    `vocab_size` (a tokenizer trained here): warn when the vocabulary came out smaller than asked."""
    if vocab_size is not None and len(tokenizer) < vocab_size:
        warnings.warn(f"the tokenizer has {len(tokenizer):,} tokens, not --vocab_size {vocab_size:,}: its training "
                      f"text has too few distinct pieces for that vocabulary", DataWarning, stacklevel=2)
    unknown_id = tokenizer.unk_token_id
    if unknown_id is None:
        return
    for where, source in texts.items():
        batch = [text for text in itertools.islice(source, sample) if text and text.strip()]
        ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"] if batch else []
        total, unknown = sum(map(len, ids)), sum(row.count(unknown_id) for row in ids)
        if not total:
            continue
        counts = (f"{unknown:,} of the {total:,} tokens of the first {len(batch):,} texts of {where} "
                  f"({100 * unknown / total:.1f}%) become {tokenizer.unk_token}")
        if unknown >= total / 2:
            raise DataError(f"the tokenizer ({len(tokenizer):,} tokens) was not made for this text: {counts}. {fix}")
        if unknown > total / 100:
            warnings.warn(f"the tokenizer does not cover all of the text: {counts}", DataWarning, stacklevel=2)
