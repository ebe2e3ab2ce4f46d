"""Scores of checkpoints for the claims experiments (tools/claims.py), in one process.

For a checkpoint at resolution R, on the held-out split (concepts never trained on):
- `eval_loss`: the v-MSE at fixed t and per-image seeded noise (harness/eval/eval_loss.py) of
  `num_loss` evenly spaced held-out images;
- from `num_samples` samples of evenly spaced held-out captions (image i from noise seeded by
  (seed, i), the same captions and seeds for every checkpoint):
  - `fid`: against all real held-out images at R (harness/eval/fid.py);
  - `top1` / `top5`: caption retrieval by the alignment probe fitted on the training split at R,
    or at `probe_px` for every resolution (fitting a probe costs Inception features of the whole
    training split), next to `real_top1`, what the real held-out images of the same captions reach
    (harness/eval/alignment.py).
A grown checkpoint is also scored against the core it grew from (`against_core`). The reference
features and probes are computed once per resolution and kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.reader import ShardedReader, to_model_range
from harness.eval import alignment, eval_loss, fid
from harness.eval.load import load_for_inference
from harness.eval.sampling import sample_sharded


@dataclass
class Reference:
    """The held-out split at one resolution: what every checkpoint at it is scored against."""

    batch: object               # the reader's Batch of the scored images (captions, tokens, images)
    images: torch.Tensor        # (n, 3, R, R) in [-1, 1]
    indices: list[int]          # their positions in the held-out split
    real_features: torch.Tensor  # Inception features of every held-out image at R
    probe: alignment.Probe


@dataclass
class Scorer:
    heldout_path: str
    train_path: str
    num_loss: int = 64
    num_samples: int = 32
    sample_steps: int = 20
    seed: int = 0
    probe_px: int | None = None
    references: dict[int, Reference] = field(default_factory=dict)

    def reference(self, res: int) -> Reference:
        if res not in self.references:
            with ShardedReader(self.heldout_path, resolution_px=res, global_batch=1, verify_checksums=False) as reader:
                everything = reader.read(range(len(reader)))
                n = min(max(self.num_loss, self.num_samples), len(reader))
                idx = np.linspace(0, len(reader) - 1, n).round().astype(int).tolist()
                batch = reader.read(idx)
            self.references[res] = Reference(batch, to_model_range(batch.images), idx,
                                             fid.inception_features(everything.images),
                                             alignment.load_or_train_probe(self.train_path, self.probe_px or res))
        return self.references[res]

    def score(self, ckpt: str | Path, samples: bool = True) -> tuple[dict, torch.Tensor | None]:
        """(scores, the samples (num_samples, 3, R, R) or None) of a checkpoint's EMA weights."""
        loaded = load_for_inference(ckpt)
        res = loaded.cfg.model.resolution_px
        ref = self.reference(res)
        text = loaded.text.encode(ref.batch, next(loaded.model.parameters()).device)
        picked = _evenly(len(ref.indices), self.num_loss)
        losses = eval_loss.per_sample_losses(loaded.model, loaded.cfg, loaded.layout, ref.images[picked],
                                             text.select(picked), [ref.indices[i] for i in picked], seed=self.seed)
        out = {"checkpoint": str(loaded.checkpoint), "stage": loaded.cfg.train.stage, "step": loaded.meta["step"],
               "resolution_px": res, "eval_loss": eval_loss.summarize(losses)["mean"]}
        if not samples:
            return out, None
        chosen = _evenly(len(ref.indices), self.num_samples)
        images = sample_sharded(loaded.model, loaded.cfg, loaded.layout,
                                lambda chunk: text.select([chosen[i] for i in chunk]), len(chosen), batch=32,
                                seed=self.seed, steps=self.sample_steps)
        feats = fid.inception_features(images)
        captions = [ref.batch.captions[i] for i in chosen]
        align = alignment.retrieval(ref.probe.project(feats), captions)
        real = alignment.retrieval(ref.probe.project(ref.real_features[[ref.indices[i] for i in chosen]]), captions)
        out.update(fid=fid.fid_from_features(feats, ref.real_features), top1=align["top1"], top5=align["top5"],
                   chance_top1=align["chance_top1"], real_top1=real["top1"])
        return out, images

    def against_core(self, grown: torch.Tensor, core: torch.Tensor) -> dict:
        """A grown model's samples area-downsampled to the core's resolution, against the core's own
        samples of the same captions and seeds: their FID (how far growing moved what the core
        draws) and their caption retrieval by the core resolution's probe (alignment, like for like)."""
        res = core.shape[-1]
        ref = self.reference(res)
        feats = fid.inception_features(F.interpolate(grown, size=(res, res), mode="area"))
        chosen = _evenly(len(ref.indices), self.num_samples)
        align = alignment.retrieval(ref.probe.project(feats), [ref.batch.captions[i] for i in chosen])
        return {"fid_to_core": fid.fid_from_features(feats, fid.inception_features(core)),
                "top1_at_core_px": align["top1"]}


def _evenly(n: int, k: int) -> list[int]:
    """k evenly spaced positions of range(n)."""
    return np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()
