"""Image grids as PNG: one column per caption, one row per image set, captions underneath."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) in [-1, 1] -> (n, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(path: str | Path, rows: list[torch.Tensor], captions: list[str], row_labels: list[str] | None = None,
              cell_px: int = 128) -> Path:
    """Write rows of images (each (n, 3, H, W) in [-1, 1]) as one PNG with captions below the columns."""
    n = len(captions)
    font = ImageFont.load_default()
    label_w = 100 if row_labels else 0
    text_h = 44
    grid = Image.new("RGB", (label_w + n * cell_px, len(rows) * cell_px + text_h), "white")
    draw = ImageDraw.Draw(grid)
    for r, images in enumerate(rows):
        for c, img in enumerate(to_uint8(images)):
            tile = Image.fromarray(img).resize((cell_px, cell_px), Image.NEAREST)
            grid.paste(tile, (label_w + c * cell_px, r * cell_px))
        if row_labels:
            draw.multiline_text((4, r * cell_px + cell_px // 2 - 16), row_labels[r], fill="black", font=font)
    for c, caption in enumerate(captions):
        lines = textwrap.wrap(caption, width=max(cell_px // 7, 8))[:3]
        draw.multiline_text((label_w + c * cell_px + 2, len(rows) * cell_px + 2), "\n".join(lines), fill="black",
                            font=font, spacing=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
