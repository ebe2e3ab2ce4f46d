"""Evaluate a checkpoint on a held-out data set: FID, text alignment, eval loss -> JSON + PNG.

    python tools/evaluate.py --ckpt runs/demo/core --num 200 [--out DIR] [key=value ...]
    torchrun --nproc_per_node 2 tools/evaluate.py --ckpt runs/demo/core parallel.tp=2

- FID of `--num` samples (held-out captions, image i from noise seeded by (seed, i)) against all
  real held-out images at the model's resolution, with the pinned Inception-v3 (harness/eval/fid.py);
  `fid_real_halves` (FID between the two halves of the real set) shows the small-sample floor.
- Alignment: caption retrieval top-1/top-5 among the distinct captions of the evaluated set, for the
  samples and for the real images (the probe's ceiling), next to chance (harness/eval/alignment.py).
- Eval loss: v-MSE on the evaluated held-out images at fixed t and noise (harness/eval/eval_loss.py).
Sampling and the eval loss are sharded over data-parallel ranks; rank 0 computes features and writes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from harness.data.reader import ShardedReader, to_model_range
from harness.eval import alignment, eval_loss, fid
from harness.eval.grid import to_uint8
from harness.eval.load import load_for_inference
from harness.eval.sampling import gather_rows, sample_sharded, shard_positions


def losses_all(loaded, x0: torch.Tensor, text, n: int, args) -> torch.Tensor:
    """Per-sample eval losses (n, len(times)) on every rank, sharded like the samples."""
    mine = shard_positions(n, loaded.layout)
    local = eval_loss.per_sample_losses(loaded.model, loaded.cfg, loaded.layout, x0[mine], text.select(list(mine)),
                                        mine, seed=args.seed, batch_size=args.batch)
    return gather_rows(local, mine, n, loaded.layout).cpu()


def write_png(path: Path, real: torch.Tensor, fake: torch.Tensor, captions: list[str], report: dict) -> None:
    """Real and sampled images of up to 8 captions over a table of the metrics."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(8, len(captions))
    fig = plt.figure(figsize=(1.6 * k + 0.8, 7.2))
    for row, (images, label) in enumerate(((real, "held-out"), (fake, "sampled"))):
        for c, img in enumerate(to_uint8(images[:k])):
            ax = fig.add_subplot(3, k, row * k + c + 1)
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
            if row == 1:
                ax.set_xlabel(captions[c][:22], fontsize=7)
    a, s, loss = report["alignment"], report["sampling"], report["eval_loss"]
    rows = [["FID (samples vs held-out)", f"{report['fid']:.1f}"],
            ["FID floor (real half vs half)", f"{report['fid_real_halves']:.1f}"],
            ["caption top-1 / top-5: samples", f"{a['samples']['top1']:.1%} / {a['samples']['top5']:.1%}"],
            ["caption top-1 / top-5: real", f"{a['real']['top1']:.1%} / {a['real']['top5']:.1%}"],
            ["chance top-1 / top-5", f"{a['samples']['chance_top1']:.1%} / {a['samples']['chance_top5']:.1%}"],
            ["eval loss (mean over t)", f"{loss['mean']:.4f}"],
            ["eval loss per t", "  ".join(f"{t}: {v:.3f}" for t, v in loss["per_t"].items())]]
    ax = fig.add_subplot(3, 1, 3)
    ax.axis("off")
    ax.table(cellText=rows, colWidths=[0.35, 0.65], loc="center", cellLoc="left").scale(1, 1.4)
    c = report["checkpoint"]
    fig.suptitle(f"{c['stage']} step {c['step']} ({c['size']}, {c['resolution_px']} px): {report['num']} held-out "
                 f"captions, {s['sampler']} {s['steps']} steps, guidance {s['guidance']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint directory, or a run directory (its `latest`)")
    parser.add_argument("--data", help="held-out data set (default: the checkpoint's data.heldout_path)")
    parser.add_argument("--train-data", help="training set the alignment probe is fitted on (default: data.path)")
    parser.add_argument("--probe-resolution", type=int,
                        help="resolution of the training images the probe is fitted on (default: the model's)")
    parser.add_argument("--num", type=int, default=200, help="held-out captions to sample (evenly spaced)")
    parser.add_argument("--steps", type=int), parser.add_argument("--sampler", choices=("ddim", "ancestral"))
    parser.add_argument("--guidance", type=float), parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass on one rank")
    parser.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    parser.add_argument("--out", help="folder for eval.json and eval.png (default: <run>/eval/<checkpoint>)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    loaded = load_for_inference(args.ckpt, args.overrides, use_ema=not args.raw)
    cfg, layout, res = loaded.cfg, loaded.layout, loaded.cfg.model.resolution_px
    d = cfg.diffusion
    args.steps, args.sampler = args.steps or d.sample_steps, args.sampler or d.sampler
    args.guidance = d.guidance_scale if args.guidance is None else args.guidance
    data = args.data or cfg.data.heldout_path
    with ShardedReader(data, resolution_px=res, global_batch=1, verify_checksums=False) as reader:
        everything = reader.read(range(len(reader)))
        n = min(args.num, len(reader))
        idx = np.linspace(0, len(reader) - 1, n).round().astype(int)
        picked = reader.read(idx)
    captions, real = picked.captions, to_model_range(picked.images)
    text = loaded.text.encode(picked, next(loaded.model.parameters()).device)
    samples = sample_sharded(loaded.model, cfg, layout, lambda chunk: text.select(list(chunk)), n, batch=args.batch,
                             seed=args.seed, steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance)
    losses = losses_all(loaded, real, text, n, args)
    if layout.rank != 0:
        return 0

    feats_real = fid.inception_features(everything.images, progress="features: held-out")
    feats_fake = fid.inception_features(samples, progress="features: samples")
    half = len(feats_real) // 2
    probe = alignment.load_or_train_probe(args.train_data or cfg.data.path, args.probe_resolution or res)
    report = {
        "checkpoint": {"path": str(loaded.checkpoint), "step": loaded.meta.get("step"), "stage": cfg.train.stage,
                       "size": cfg.model.size, "arch": cfg.model.arch, "resolution_px": res,
                       "weights": "raw" if args.raw else "ema"},
        "data": data, "num": n, "num_reference": len(feats_real),
        "sampling": {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance, "seed": args.seed},
        "fid": fid.fid_from_features(feats_fake, feats_real),
        "fid_real_halves": fid.fid_from_features(feats_real[:half], feats_real[half:]),
        "alignment": {"samples": alignment.retrieval(probe.project(feats_fake), captions),
                      "real": alignment.retrieval(probe.project(feats_real[idx]), captions),
                      "probe": probe.meta},
        "eval_loss": eval_loss.summarize(losses),
        "layout": layout.describe(), "seconds": round(time.perf_counter() - start, 1),
    }
    out = Path(args.out) if args.out else loaded.checkpoint.parent / "eval" / loaded.checkpoint.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    write_png(out / "eval.png", real, samples, captions, report)
    print(json.dumps({k: report[k] for k in ("fid", "fid_real_halves", "eval_loss")}, indent=1))
    print(f"alignment top-1 samples {report['alignment']['samples']['top1']:.3f} real "
          f"{report['alignment']['real']['top1']:.3f} chance {report['alignment']['samples']['chance_top1']:.3f}")
    print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0


def cli() -> None:
    """The console script `harness-evaluate` (setup.cfg) and `python tools/evaluate.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
