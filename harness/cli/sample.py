"""Prompts -> images from any checkpoint, at any parallel layout.

    python tools/sample.py --ckpt runs/demo/core --prompt "red apple" --prompt "dog face" --out samples.png
    torchrun --nproc_per_node 4 tools/sample.py --ckpt runs/demo/core --prompts-file p.txt --out out/ parallel.tp=2

Image i starts from noise seeded by (seed, i), so a set is identical at any world size. Data-parallel
rank d samples the prompts i = d (mod dp); rank 0 gathers and writes. `--out x.png` writes a grid,
`--out DIR` writes DIR/grid.png and DIR/0000.png ... . Trailing key=value override the checkpoint's
config (e.g. parallel.tp=2 parallel.pp=2 to load a TP=1 checkpoint sharded another way).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from harness.eval.grid import save_grid, to_uint8
from harness.eval.load import load_for_inference
from harness.eval.sampling import sample_sharded


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("tools/sample.py: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint directory, or a run directory (its `latest`)")
    parser.add_argument("--prompt", action="append", help="a caption (repeatable)")
    parser.add_argument("--prompts-file", help="captions, one per line")
    parser.add_argument("--out", default="samples.png", help="grid PNG path, or a directory for one PNG per image")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the config's)")
    parser.add_argument("--sampler", choices=("ddim", "ancestral"), help="default: the config's")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass on one rank")
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    prompts = read_prompts(args)

    loaded = load_for_inference(args.ckpt, args.overrides, use_ema=not args.raw)
    model, cfg, layout = loaded.model, loaded.cfg, loaded.layout
    dev = next(model.parameters()).device
    everything = sample_sharded(model, cfg, layout,
                                lambda chunk: loaded.text.encode_captions([prompts[i] for i in chunk], dev),
                                len(prompts), batch=args.batch, seed=args.seed, steps=args.steps,
                                sampler=args.sampler, guidance_scale=args.guidance)
    res = cfg.model.resolution_px
    if layout.rank == 0:
        out = Path(args.out)
        if out.suffix.lower() == ".png":
            save_grid(out, [everything], prompts, cell_px=max(res, 128))
        else:
            out.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(to_uint8(everything)):
                Image.fromarray(img).save(out / f"{i:04d}.png")
            save_grid(out / "grid.png", [everything], prompts, cell_px=max(res, 128))
        step = loaded.meta.get("step")
        print(f"{len(prompts)} images from {loaded.checkpoint} (step {step}, {cfg.train.stage}, {res}px) -> {out}")
    return 0


def cli() -> None:
    """The console script `harness-sample` (setup.cfg) and `python tools/sample.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
