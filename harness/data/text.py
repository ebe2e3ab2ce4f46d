"""Captions of a batch as model input: SentencePiece tokens, a frozen Hugging Face encoder's states
(precomputed in the shards, or computed on the fly for free prompts), or precomputed embeddings."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.config import RunConfig
from harness.data.format import read_manifest
from harness.data.hf_text import HFTextEncoder
from harness.data.reader import Batch
from harness.data.tokenizer import TOKENIZER_FILE, Tokenizer
from harness.model.conditioning import TextInput


class TextSource:
    """Turns a Batch's captions into a TextInput, the way the configured text encoder needs."""

    def __init__(self, cfg: RunConfig, tokenizer_path: str | Path | None = None):
        self.max_len = cfg.model.text_max_len
        self.tokenizer: Tokenizer | None = None
        self.encoder: HFTextEncoder | None = None
        self.text_dim: int | None = None
        self._checked: set[str] = set()          # data sets whose embeddings were found to be the encoder's
        if cfg.model.text_encoder == "learned":
            self.tokenizer = Tokenizer(tokenizer_path or cfg.data.tokenizer or Path(cfg.data.path) / TOKENIZER_FILE)
        elif cfg.model.text_encoder == "hf":
            self.encoder = HFTextEncoder.open(cfg.model.text_encoder_path)
            self.encoder.check_max_len(self.max_len)
            self.text_dim = self.encoder.dim
        else:
            spec = read_manifest(cfg.data.path).text_embedding
            if not spec:
                raise ValueError(f"{cfg.data.path}/manifest.json: model.text_encoder=precomputed, but the data set "
                                 "has no text_embedding (run tools/embed_captions.py)")
            self.text_dim = int(spec["dim"])

    @property
    def identity(self) -> dict | None:
        """The frozen encoder's {name, revision, dim}, recorded in every checkpoint (None: not hf)."""
        return self.encoder.identity if self.encoder else None

    def files(self) -> dict[str, bytes]:
        """Files a checkpoint must carry to encode captions without the data set (the tokenizer)."""
        return {TOKENIZER_FILE: self.tokenizer.model_bytes} if self.tokenizer else {}

    @property
    def vocab_size(self) -> int | None:
        return self.tokenizer.vocab_size if self.tokenizer else None

    def encode_captions(self, captions: list[str], device: torch.device | str = "cpu") -> TextInput:
        """TextInput of raw caption strings (prompts): the learned encoder's tokens or the frozen encoder's states."""
        if self.encoder is not None:
            emb, lengths = self.encoder.encode(list(captions), self.max_len, device)
            return TextInput(lengths=lengths.to(device), emb=emb.to(device))
        if self.tokenizer is None:
            raise ValueError("model.text_encoder=precomputed: prompts need the frozen encoder's embeddings, "
                             "which only the data set's shards carry (text_emb); train with model.text_encoder=hf "
                             "to encode free prompts, or sample held-out captions")
        tokens, lengths = self.tokenizer.encode(list(captions), self.max_len)
        return TextInput(lengths=lengths.to(device), tokens=tokens.to(device))

    def encode(self, batch: Batch, device: torch.device | str = "cpu") -> TextInput:
        """TextInput (B captions) on `device`."""
        if self.tokenizer is not None or (self.encoder is not None and batch.text_emb is None):
            return self.encode_captions(batch.captions, device)
        if self.encoder is not None and batch.root not in self._checked:
            self.encoder.check_spec(batch.text_embedding, self.max_len, f"{batch.root}/manifest.json")
            self._checked.add(batch.root)
        emb = batch.text_emb[:, : self.max_len].to(device)
        return TextInput(lengths=batch.text_len.clamp(1, self.max_len).to(device), emb=emb)
