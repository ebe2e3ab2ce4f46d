"""Small ingest inputs built on the fly: encoded images and webdataset tars in img2dataset's layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def image_bytes(w: int, h: int, colour=(200, 30, 30), fmt: str = "PNG") -> bytes:
    """A w x h image file: a coloured rectangle on white."""
    img = Image.new("RGB", (w, h), "white")
    img.paste(colour, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of (name, bytes) members in this order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample(key: str, data: bytes, caption: str | None, ext: str = "png", as_json: bool = False):
    """The members of one img2dataset sample: the image, and the caption in {key}.txt or {key}.json."""
    members = [(f"{key}.{ext}", data)]
    if caption is not None:
        members.append((f"{key}.json", json.dumps({"caption": caption}).encode()) if as_json
                       else (f"{key}.txt", caption.encode()))
    return members
