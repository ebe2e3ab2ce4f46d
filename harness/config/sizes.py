"""Model sizes as data. The core holds ~16·L·H² parameters (self- and cross-attention, 4H MLP).

`python tools/count_params.py` builds each size on the meta device and prints its parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    """Core width H."""
    layers: int
    """Core depth L (transformer layers)."""
    heads: int
    """Core attention heads (H / heads is the head dim)."""
    channels: int
    """Convolution channels next to the core (the core's input/output channels)."""
    text_width: int
    """Width of the learned text encoder."""
    text_layers: int
    """Depth of the learned text encoder."""
    text_heads: int
    """Heads of the learned text encoder."""


MODEL_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden=32, layers=2, heads=2, channels=16, text_width=32, text_layers=1, text_heads=2),
    "small": ModelSize(hidden=256, layers=6, heads=4, channels=128, text_width=128, text_layers=2, text_heads=4),
    # `small` with a narrower and a wider core (all else equal): the core sizes of claim 1 (tools/claims.py).
    "small-128": ModelSize(hidden=128, layers=6, heads=2, channels=128, text_width=128, text_layers=2, text_heads=4),
    "small-512": ModelSize(hidden=512, layers=6, heads=8, channels=128, text_width=128, text_layers=2, text_heads=4),
    # ~50 M parameters: a laptop-scale model with a 512-wide core (the second size of bench_step's peer case).
    "base": ModelSize(hidden=512, layers=10, heads=8, channels=256, text_width=256, text_layers=2, text_heads=4),
    # A mid-size core (~134 M core parameters) for memory-model checks and resharding benchmarks.
    "mid": ModelSize(hidden=1024, layers=8, heads=16, channels=128, text_width=256, text_layers=2, text_heads=4),
    # `mid` with 16 layers (~270 M core parameters): its grown checkpoint holds over 1 GB (growth benchmark).
    "mid-16": ModelSize(hidden=1024, layers=16, heads=16, channels=128, text_width=256, text_layers=2, text_heads=4),
    "2b": ModelSize(hidden=2048, layers=30, heads=16, channels=256, text_width=1024, text_layers=6, text_heads=16),
    "4b": ModelSize(hidden=3072, layers=26, heads=24, channels=384, text_width=1024, text_layers=6, text_heads=16),
    "8b": ModelSize(hidden=4096, layers=30, heads=32, channels=512, text_width=1024, text_layers=6, text_heads=16),
}


def default_level_channels(size: ModelSize, levels: int) -> list[int]:
    """Channels of a grown model's levels, innermost first: halving outwards from the core, >= 32.
    Level i's channels do not depend on how many levels there are, so growing keeps them."""
    return [max(size.channels >> (i + 1), 32) for i in range(levels)]
