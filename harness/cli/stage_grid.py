"""The same held-out captions sampled by every stage of a growth chain, side by side, as one PNG.

    python tools/stage_grid.py runs/demo/core runs/demo/grow-frozen runs/demo/grow-finetune --out runs/demo/stages.png

Each checkpoint samples with its EMA weights, its own resolution and the same seeds; rows are shown
at the largest resolution (nearest-neighbour up-sampling keeps the lower resolutions visible as such).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.data.reader import ShardedReader, to_model_range
from harness.eval.grid import save_grid
from harness.eval.load import load_for_inference
from harness.eval.sampling import sample_captions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoints or run directories, in stage order")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=8, help="held-out captions")
    parser.add_argument("--steps", type=int, help="sampling steps (default: each config's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows, labels, batch, size = [], [], None, 0
    for path in tqdm(args.checkpoints, desc="stages"):
        loaded = load_for_inference(path)
        cfg = loaded.cfg
        if batch is None:
            with ShardedReader(cfg.data.heldout_path, resolution_px=cfg.model.resolution_px, global_batch=1,
                               verify_checksums=False) as heldout:
                stored = heldout.manifest.resolution_px
                idx = np.linspace(0, len(heldout) - 1, args.num).round().astype(int)
            with ShardedReader(cfg.data.heldout_path, resolution_px=stored, global_batch=1, verify_checksums=False) as r:
                batch = r.read(idx)
        images = sample_captions(loaded.model, cfg, loaded.layout, loaded.text.encode(batch), list(range(args.num)),
                                 seed=args.seed, steps=args.steps)
        rows.append(images)
        size = max(size, cfg.model.resolution_px)
        labels.append(f"{cfg.train.stage}\n{cfg.model.resolution_px}px\nstep {loaded.meta['step']}")
    real = to_model_range(batch.images)
    rows = [F.interpolate(real, size=size, mode="area")] + [F.interpolate(r, size=size, mode="nearest") for r in rows]
    path = save_grid(args.out, rows, batch.captions, ["held-out"] + labels, cell_px=max(128, size))
    print(f"wrote {path}")
    return 0


def cli() -> None:
    """The console script `harness-stage-grid` (setup.cfg) and `python tools/stage_grid.py`."""
    with torch.no_grad():
        raise SystemExit(main())


if __name__ == "__main__":
    cli()
