"""Captions as a tokenizer sees them: which characters become its unknown token, which captions use
a non-Latin script or emoji, and how many captions `model.text_max_len` truncates.

A tokenizer here is anything with `token_counts(captions) -> list[int]` (tokens each caption needs,
special tokens included), such as harness.data.tokenizer.Tokenizer.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import emoji
import numpy as np

TRUNCATION_WARN = 0.01  # warn when more than 1% of the captions are cut


def has_emoji(text: str) -> bool:
    return emoji.emoji_count(text) > 0


def non_latin_letters(text: str) -> bool:
    """Whether `text` holds a letter of a script other than Latin (CJK, Cyrillic, Arabic, ...)."""
    return any(c.isalpha() and not c.isascii() and "LATIN" not in unicodedata.name(c, "") for c in text)


def unknown_characters(tokenizer: str | Path) -> Callable[[str], list[str]]:
    """A function text -> the characters of it that `tokenizer` maps to its unknown token, for a
    SentencePiece `.model` file or a Hugging Face tokenizer (a local folder or a cached name)."""
    path = Path(tokenizer)
    if path.suffix == ".model" and path.is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.load_from_serialized_proto(path.read_bytes())
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path}: not a SentencePiece model ({' '.join(str(e).split())})") from None
        unk, encode = sp.unk_id(), sp.encode
    else:
        from harness.data.hf_text import HFTextEncoder

        hf = HFTextEncoder.open(str(tokenizer)).tokenizer
        unk = hf.unk_token_id
        encode = lambda c: hf(c, add_special_tokens=False)["input_ids"]  # noqa: E731
    cache: dict[str, bool] = {}

    def unknown(text: str) -> list[str]:
        out = []
        for c in dict.fromkeys(text):
            if c.isspace():
                continue
            if c not in cache:
                cache[c] = unk is not None and unk in encode(c)
            if cache[c]:
                out.append(c)
        return out

    return unknown


def truncation_rate(root: str | Path, tokenizer, text_max_len: int, *, sample: int = 10_000, seed: int = 0) -> float:
    """Fraction of the data set's captions longer than `text_max_len` tokens for `tokenizer`, from
    up to `sample` captions drawn at random (all of them in a smaller data set)."""
    from harness.data.reader import iter_captions

    captions = list(iter_captions(root))
    if len(captions) > sample:
        pick = np.random.default_rng(seed).choice(len(captions), sample, replace=False)
        captions = [captions[i] for i in pick]
    return float(np.mean(np.asarray(tokenizer.token_counts(captions)) > text_max_len)) if captions else 0.0


def truncation_warning(root: str | Path, rate: float, text_max_len: int,
                       threshold: float = TRUNCATION_WARN) -> str | None:
    """The warning to print when more than `threshold` of the captions are cut, else None."""
    if rate <= threshold:
        return None
    return (f"warning: {rate:.1%} of the captions of {root} are longer than model.text_max_len={text_max_len} "
            f"tokens and are truncated; raise model.text_max_len to keep them whole")
