"""SentencePiece BPE tokenizer trained on a data set's captions.

Ids: pad 0, unk 1, eos 2, no bos. Every encoded caption ends with eos, so a caption's length is at
least 1 and the text encoder always has a token to attend to, even for an empty (dropped) caption.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import torch

TOKENIZER_FILE = "tokenizer.model"  # default place: <data set folder>/tokenizer.model


def train_tokenizer(captions: Iterable[str], path: str | Path, *, vocab_size: int = 1000) -> None:
    """Train a BPE model on `captions` and write it to `path` atomically."""
    path = Path(path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=2,
        # A small caption set may hold fewer pieces than asked for; train what it has instead of failing.
        hard_vocab_limit=False,
        character_coverage=1.0,  # emoji names and non-English captions: keep every character seen
        num_threads=os.cpu_count() or 1, minloglevel=2)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, path)


class Tokenizer:
    """Encode captions to fixed-length id tensors (eos-terminated, pad-filled) and back."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no tokenizer model; train one with "
                                    f"tools/train_tokenizer.py --data <data set>")
        # Kept in memory: a checkpoint bundles these bytes even after the file it came from is
        # pruned (a stage started from a checkpoint in its own run folder deletes it later).
        self.model_bytes = self.path.read_bytes()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load_from_serialized_proto(self.model_bytes)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.path}: not a SentencePiece model ({' '.join(str(e).split())})") from None
        self.vocab_size: int = self._sp.get_piece_size()
        self.pad_id: int = self._sp.pad_id()
        self.eos_id: int = self._sp.eos_id()
        if self.pad_id < 0 or self.eos_id < 0:
            raise ValueError(f"{self.path}: model has no pad or eos id (pad={self.pad_id}, eos={self.eos_id}); "
                             f"train it with harness.data.tokenizer.train_tokenizer")

    def encode(self, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ids int64 (B, max_len) pad-filled, each ending in eos (truncated to keep it); lengths int64 (B,) >= 1."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        pieces = self._sp.encode(list(captions))
        ids = torch.full((len(pieces), max_len), self.pad_id, dtype=torch.int64)
        lengths = torch.empty(len(pieces), dtype=torch.int64)
        for b, p in enumerate(pieces):
            p = p[:max_len - 1] + [self.eos_id]
            ids[b, :len(p)] = torch.tensor(p, dtype=torch.int64)
            lengths[b] = len(p)
        return ids, lengths

    def token_counts(self, captions: Sequence[str]) -> list[int]:
        """Tokens each caption needs, eos included (`encode` keeps the first max_len of them)."""
        return [len(p) + 1 for p in self._sp.encode(list(captions))]

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Text of each row of ids, read up to its first eos; pad ids are dropped."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
        texts = []
        for row in rows:
            if self.eos_id in row:
                row = row[:row.index(self.eos_id)]
            texts.append(self._sp.decode([i for i in row if i != self.pad_id]))
        return texts
