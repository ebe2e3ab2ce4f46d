"""Load a checkpoint for inference (sampling, evaluation) into the current process layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.checkpoint import io
from harness.checkpoint.stage import bundled_tokenizer
from harness.checkpoint.state import load_weights
from harness.config import RunConfig, from_dict
from harness.data.text import TextSource
from harness.distributed.launch import init_distributed
from harness.model.uvit import UViT
from harness.parallel.layout import Layout, device, initialize_layout
from harness.parallel.pipeline import build_stage


@dataclass
class Loaded:
    model: UViT
    cfg: RunConfig
    text: TextSource
    layout: Layout
    meta: dict
    checkpoint: Path


def load_for_inference(path: str | Path, overrides: list[str] = (), *, use_ema: bool = True) -> Loaded:
    """The EMA (or raw) weights of a checkpoint in this process's layout (`parallel.tp=` / `pp=` overrides)."""
    ckpt = io.resolve(path)
    meta = io.read_meta(ckpt)
    cfg = from_dict(meta["config"], str(ckpt / "meta.json"), list(overrides))
    init_distributed()
    layout = initialize_layout(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed)
    text = TextSource(cfg, bundled_tokenizer(ckpt))
    model = build_stage(cfg, layout, vocab_size=text.vocab_size, text_dim=text.text_dim, device=device())
    load_weights(ckpt, model, use_ema=use_ema, text_encoder=text.identity)
    model.eval()
    return Loaded(model, cfg, text, layout, meta, ckpt)
