"""Text and time conditioning: what the core cross-attends to and what modulates every block.

Both the learned text encoder (SentencePiece tokens -> small transformer) and a frozen encoder's
states (a T5, CLIP or MiniLM, precomputed into the shards or run on the fly: harness/data/hf_text.py)
end in the same projection to the core width. These modules are kept when the model grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.model.blocks import sinusoidal_embedding


@dataclass
class TextInput:
    """A batch of captions as the model takes them; exactly one of `tokens` / `emb` is set."""

    lengths: torch.Tensor                  # (B,) int64, valid tokens per caption (>= 1)
    tokens: torch.Tensor | None = None     # (B, L) int64 SentencePiece ids, padded
    emb: torch.Tensor | None = None        # (B, L, D) precomputed frozen-encoder states
    drop: torch.Tensor | None = None       # (B,) bool: use the null caption (guidance training)

    def select(self, index) -> TextInput:
        """The captions at `index` (a slice, or a list or tensor of rows) of the batch."""
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return TextInput(pick(self.lengths), pick(self.tokens), pick(self.emb), pick(self.drop))


class TextEncoder(nn.Module):
    """A small pre-norm transformer over caption tokens, trained with the diffusion model."""

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, (B, L) bool valid -> (B, L, width)."""
        x = self.tok_emb(tokens) + self.pos_emb[: tokens.shape[1]]
        return self.norm(self.blocks(x, src_key_padding_mask=~valid))


class Conditioning(nn.Module):
    """(t, captions) -> cond (B, H) for every block, context (B, L, H) and its mask for cross-attention.

    The time embedding takes the schedule position t in [0, 1], not the log-SNR: a grown model at
    a higher resolution uses a shifted schedule, and at equal t its noisy images look as noisy to
    the core as the low-resolution ones did in pre-training.
    """

    def __init__(self, hidden: int, text_dim: int, text_encoder: TextEncoder | None, time_features: int = 256):
        super().__init__()
        self.time_features = time_features
        self.time = nn.Sequential(nn.Linear(time_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.text = text_encoder
        self.null_text = nn.Parameter(torch.zeros(text_dim))
        self.context_proj = nn.Linear(text_dim, hidden)
        self.pool_proj = nn.Linear(text_dim, hidden)

    def forward(self, t: torch.Tensor, text: TextInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return cond (B, H), context (B, L, H), context_valid (B, L) bool."""
        length = text.tokens.shape[1] if text.tokens is not None else text.emb.shape[1]
        valid = torch.arange(length, device=t.device)[None, :] < text.lengths[:, None]  # (B, L)
        if self.text is not None:
            if text.tokens is None:
                raise ValueError("model.text_encoder=learned needs caption tokens, got embeddings")
            feats = self.text(text.tokens, valid)
        else:
            if text.emb is None:
                raise ValueError("model.text_encoder=precomputed or hf needs a frozen encoder's states, got tokens")
            feats = text.emb.to(self.null_text.dtype)
        if text.drop is not None:
            # The null caption: one learned token, everything else masked out.
            null = torch.zeros_like(feats[:1])
            null[0, 0] = self.null_text
            drop = text.drop[:, None]
            feats = torch.where(drop[..., None], null, feats)
            valid = torch.where(drop, torch.arange(length, device=t.device)[None, :] == 0, valid)
        weights = valid.to(feats.dtype)[..., None]
        pooled = (feats * weights).sum(1) / weights.sum(1)                                  # (B, text_dim)
        cond = self.time(sinusoidal_embedding(1000.0 * t, self.time_features).to(feats.dtype))
        cond = cond + self.pool_proj(pooled)
        return cond, self.context_proj(feats), valid
