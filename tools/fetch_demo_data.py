"""Fetch the demo image-caption set: npm `@lobehub/fluent-emoji-3d` (3D emoji renders, 256 px, MIT).

    python tools/fetch_demo_data.py --out data/raw

Unpacks into `<out>/fluent-emoji-3d/package/assets/*.webp` and writes
`<out>/fluent-emoji-3d/metadata.jsonl` (file, caption, id, split), the input of tools/make_shards.py.
Captions are the emoji names of the PyPI `emoji` package. About 10% of the concepts are held out,
chosen by a stable hash of the concept, so every skin-tone variant of a concept is on one side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import emoji

PACKAGE = "@lobehub/fluent-emoji-3d"
VERSION = "1.1.0"
DIRNAME = "fluent-emoji-3d"
HELDOUT_PER_MILLE = 100
_SKIN_TONE = re.compile(r"\s*\b(light|medium-light|medium|medium-dark|dark) skin tone\b")


def safe_extract(tar: tarfile.TarFile, target: Path) -> None:
    """Extract regular files and folders of `tar` under `target`; refuse links, devices and escaping paths."""
    target = target.resolve()
    for member in tar.getmembers():
        dest = (target / member.name).resolve()
        if not dest.is_relative_to(target) or not (member.isfile() or member.isdir()):
            raise ValueError(f"{tar.name}: refusing member {member.name!r} (link, device or path outside {target})")
    # filter="data" applies the same policy inside tarfile (and strips modes such as setuid).
    tar.extractall(target, filter="data")


def fetch(out: Path) -> Path:
    """Download and unpack the npm package into `out/fluent-emoji-3d` unless already there; return that folder."""
    root = out / DIRNAME
    package_json = root / "package" / "package.json"
    if package_json.exists() and json.loads(package_json.read_text())["version"] == VERSION:
        print(f"{root}: {PACKAGE}@{VERSION} already extracted, skipping the download")
        return root
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{DIRNAME}-") as tmp:
        tmp = Path(tmp).resolve()
        start = time.perf_counter()
        try:
            subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"],
                           check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SystemExit("npm not found: install Node.js (Debian: apt-get install npm)") from None
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"npm pack {PACKAGE}@{VERSION} failed with exit status {e.returncode}") from None
        (tarball,) = tmp.glob("*.tgz")
        print(f"npm pack {PACKAGE}@{VERSION}: {tarball.stat().st_size / 1e6:.1f} MB "
              f"in {time.perf_counter() - start:.1f} s")
        staging = tmp / DIRNAME
        with tarfile.open(tarball) as tar:
            safe_extract(tar, staging)
        # Renamed into place only when whole, so an interrupted fetch is never taken as done.
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    return root


def caption_of(stem: str) -> str | None:
    """Emoji name for a file stem of code points joined by '-' or '_' (e.g. '1f9a4'), or None."""
    try:
        text = "".join(chr(int(h, 16)) for h in re.split("[-_]", stem))
    except ValueError:
        return None
    # File names drop or keep the emoji variation selector U+FE0F inconsistently; try both.
    data = (emoji.EMOJI_DATA.get(text) or emoji.EMOJI_DATA.get(text.replace("\ufe0f", ""))
            or emoji.EMOJI_DATA.get(text + "\ufe0f"))
    return data["en"].strip(":").replace("_", " ") if data else None


def base_concept(caption: str) -> str:
    """The caption without its skin-tone words: 'man light skin tone red hair' -> 'man red hair'."""
    return _SKIN_TONE.sub("", caption).strip()


def split_of(caption: str) -> str:
    """'heldout' for about 10% of concepts, fixed by sha256 of the base concept (not Python's salted hash)."""
    digest = hashlib.sha256(base_concept(caption).encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 1000 < HELDOUT_PER_MILLE else "train"


def write_metadata(root: Path) -> dict[str, int]:
    """Write `root/metadata.jsonl` for every named image; return counts."""
    rows, unnamed = [], 0
    for path in sorted((root / "package" / "assets").glob("*.webp")):
        caption = caption_of(path.stem)
        if caption is None:
            unnamed += 1
            continue
        rows.append({"file": path.relative_to(root).as_posix(), "caption": caption, "id": path.stem,
                     "split": split_of(caption)})
    tmp = root / ".metadata.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(root / "metadata.jsonl")
    counts = {"named": len(rows), "unnamed": unnamed,
              "train": sum(r["split"] == "train" for r in rows),
              "heldout": sum(r["split"] == "heldout" for r in rows),
              "concepts": len({base_concept(r["caption"]) for r in rows}),
              "heldout_concepts": len({base_concept(r["caption"]) for r in rows if r["split"] == "heldout"})}
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="folder to unpack into")
    args = parser.parse_args(argv)
    root = fetch(args.out)
    counts = write_metadata(root)
    print(f"{root / 'metadata.jsonl'}: {counts['named']} named images ({counts['unnamed']} skipped without a "
          f"name), {counts['concepts']} concepts; train {counts['train']}, heldout {counts['heldout']} "
          f"({counts['heldout_concepts']} concepts)")
    return counts


if __name__ == "__main__":
    main()
