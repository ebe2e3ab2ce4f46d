"""What ingest keeps, how it turns an encoded image into the stored squares, and the report of what
it skipped.

A record is skipped, and counted under one reason with its place named, when its caption is empty
or too long, its image is missing or cannot be decoded, its aspect ratio is out of range, it is
smaller than the lowest stored resolution (unless upsampling), or it repeats an earlier image
(same bytes) or id. A source smaller than a higher resolution is left out of that resolution's
data set only. With `strict`, damaged input (a missing or undecodable image, an unreadable input
file) is an error instead of a skip.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from harness.data.captions import has_emoji, non_latin_letters

DAMAGE = ("missing_image", "undecodable", "broken_input")   # errors under --strict
REASONS = ("no_caption", "empty_caption", "long_caption", "duplicate_id", "duplicate_image", "aspect_ratio",
           "too_small") + DAMAGE


@dataclass(frozen=True)
class Policy:
    resolutions: tuple[int, ...]            # ascending
    upsample: bool = False                  # store sources smaller than a resolution, upsampled
    min_aspect: float = 0.5                 # width / height range kept
    max_aspect: float = 2.0
    max_caption_chars: int = 1000
    strict: bool = False


class Skip(Exception):
    """A record that is not stored: `reason` (one of REASONS) and what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def check_caption(caption: str | None, policy: Policy, problem: str = "") -> None:
    """Raise Skip for a missing, empty (blank) or over-long caption."""
    if caption is None:
        raise Skip("no_caption", problem or "no caption")
    if not caption.strip():
        raise Skip("empty_caption", "the caption is empty")
    if len(caption) > policy.max_caption_chars:
        raise Skip("long_caption", f"{len(caption)} characters, more than {policy.max_caption_chars}")


def decode(data: bytes) -> Image.Image:
    """The whole image decoded to RGB, transparency composited on white; Skip("undecodable") if not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode not in ("RGBA", "LA", "PA") and "transparency" not in im.info:
                    return im.convert("RGB")
                rgba = im.convert("RGBA")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise Skip("undecodable", " ".join(str(e).split()) or type(e).__name__) from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def square(image: Image.Image, resolution_px: int) -> np.ndarray:
    """RGB uint8 [R, R, 3]: the centred square crop resized to R (BOX, the exact area average, for an
    integer shrink factor; LANCZOS otherwise)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    im = image.crop((left, top, left + side, top + side))
    if side != resolution_px:
        box = side > resolution_px and side % resolution_px == 0
        im = im.resize((resolution_px, resolution_px), Image.Resampling.BOX if box else Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def stored_squares(image: Image.Image, policy: Policy) -> tuple[dict[int, np.ndarray], list[int]]:
    """The squares of every resolution this source is stored at, and the resolutions it is too small
    for; Skip for an aspect ratio out of range or a source below the lowest resolution."""
    w, h = image.size
    if not policy.min_aspect <= w / h <= policy.max_aspect:
        raise Skip("aspect_ratio", f"{w}x{h}, width/height {w / h:.2f} outside "
                                   f"[{policy.min_aspect}, {policy.max_aspect}]")
    side = min(w, h)
    fits = [r for r in policy.resolutions if policy.upsample or side >= r]
    if not fits:
        raise Skip("too_small", f"{w}x{h}, smaller than {policy.resolutions[0]} px (--upsample stores it upsampled)")
    return {r: square(image, r) for r in fits}, [r for r in policy.resolutions if r not in fits]


class Report:
    """Counts per skip reason with the first `examples` places, what each resolution stored, and
    caption text a tokenizer may not know (non-Latin letters, emoji, unknown-token characters)."""

    def __init__(self, examples: int = 20):
        self.examples = examples
        self.records = 0
        self.skipped: dict[str, dict] = {}
        self.stored: Counter = Counter()
        self.too_small_for: dict[str, dict] = {}
        self.captions: dict[str, dict] = {}
        self.unknown_chars: Counter = Counter()

    def _add(self, table: dict, key: str, where: str) -> None:
        entry = table.setdefault(key, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < self.examples:
            entry["examples"].append(where)

    def skip(self, reason: str, where: str) -> None:
        self._add(self.skipped, reason, where)

    def store(self, resolutions, too_small_for, where: str) -> None:
        self.stored.update(str(r) for r in resolutions)
        for r in too_small_for:
            self._add(self.too_small_for, str(r), where)

    def caption(self, caption: str, where: str, unknown: list[str]) -> None:
        """Note a stored caption's non-Latin letters, emoji and unknown-token characters."""
        if non_latin_letters(caption):
            self._add(self.captions, "non_latin_letters", where)
        if has_emoji(caption):
            self._add(self.captions, "emoji", where)
        if unknown:
            self._add(self.captions, "unknown_token", f"{where}: {''.join(unknown)}")
            self.unknown_chars.update(unknown)

    def to_dict(self) -> dict:
        return {"records": self.records, "stored": dict(self.stored), "skipped": self.skipped,
                "too_small_for": self.too_small_for, "captions": self.captions,
                "unknown_characters": dict(self.unknown_chars.most_common())}

    @classmethod
    def merged(cls, parts: list[dict], examples: int) -> Report:
        """One report from the to_dict() of several, in order (examples: the first ones)."""
        out = cls(examples)
        for part in parts:
            out.records += part["records"]
            out.stored.update(part["stored"])
            out.unknown_chars.update(part["unknown_characters"])
            for name in ("skipped", "too_small_for", "captions"):
                table = getattr(out, name)
                for key, entry in part[name].items():
                    mine = table.setdefault(key, {"count": 0, "examples": []})
                    mine["count"] += entry["count"]
                    mine["examples"] = (mine["examples"] + entry["examples"])[:examples]
        return out
