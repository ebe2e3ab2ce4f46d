"""The paper's second claim at small scale: growing a pre-trained core beats training the grown
architecture from scratch for the same training compute.

    python tools/growth_vs_scratch.py --out runs/growth_vs_scratch --core-steps 600 --frozen-steps 300 --finetune-steps 300

Arm A (greedy growing, configs/demo/*): core at 64 px -> grow -> grow-frozen -> grow-finetune at 128 px.
Arm B: the same 128 px architecture from scratch (core's learning-rate settings) for as many steps
as make its training FLOPs equal arm A's total. FLOPs per step are counted (FlopCounterMode) on one
real step of each configuration (frozen layers skip their weight gradients). Both arms are then
scored by the held-out v-loss at fixed noise levels and seeds (harness/eval/eval_loss.py), and one
PNG shows the same held-out captions from every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness.config import load
from harness.data.reader import ShardedReader
from harness.dist.launch import init_distributed
from harness.eval.eval_loss import per_sample_losses, summarize
from harness.eval.flops import count_flops
from harness.eval.load import load_for_inference
from harness.growth.grow import grow
from harness.parallel.layout import initialize_layout
from harness.train.loop import train
from harness.train.synthetic import synthetic_step


def step_tflops(cfg, frozen_prefixes=()) -> float:
    """Training FLOPs of one optimizer step of `cfg` (counted on a real step, random data)."""
    step, _ = synthetic_step(cfg, initialize_layout(1, 1), frozen_prefixes=frozen_prefixes)
    return count_flops(step) / 1e12


def heldout_loss(run: Path, num: int) -> dict:
    loaded = load_for_inference(run)
    cfg = loaded.cfg
    with ShardedReader(cfg.data.heldout_path, resolution_px=cfg.model.resolution_px, global_batch=1,
                       verify_checksums=False) as heldout:
        idx = np.linspace(0, len(heldout) - 1, min(num, len(heldout))).round().astype(int)
        batch = heldout.read(idx)
    x0 = batch.images.float() / 127.5 - 1
    losses = per_sample_losses(loaded.model, cfg, loaded.layout, x0, loaded.text.encode(batch), list(idx))
    return {"step": loaded.meta["step"], "resolution_px": cfg.model.resolution_px, **summarize(losses)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/growth_vs_scratch"))
    parser.add_argument("--core-steps", type=int, default=600)
    parser.add_argument("--frozen-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--eval-num", type=int, default=128, help="held-out images for the eval loss")
    parser.add_argument("overrides", nargs="*", help="applied to every stage, e.g. data paths")
    args = parser.parse_args(argv)
    init_distributed()
    out = args.out
    common = ["train.time_limit_minutes=0", "train.sample_every_steps=0"] + args.overrides
    stage = lambda cfg, run, steps, extra=(): load(cfg, common + [  # noqa: E731
        f"train.run_dir={out / run}", f"train.steps={steps}", f"optim.decay_steps={steps}", *extra])
    core = stage("configs/demo/core.yaml", "core", args.core_steps)
    frozen = stage("configs/demo/grow-frozen.yaml", "grow-frozen", args.frozen_steps)
    finetune = stage("configs/demo/grow-finetune.yaml", "grow-finetune", args.finetune_steps,
                     [f"train.init_from={out / 'grow-frozen'}"])
    flops = {"core": step_tflops(core), "grow-frozen": step_tflops(frozen, ("cond.", "core.")),
             "grow-finetune": step_tflops(finetune)}
    budget = (args.core_steps * flops["core"] + args.frozen_steps * flops["grow-frozen"]
              + args.finetune_steps * flops["grow-finetune"])
    scratch_steps = math.ceil(budget / flops["grow-finetune"])
    opt = core.optim
    scratch = stage("configs/demo/grow-finetune.yaml", "scratch", scratch_steps, [
        "train.init_from=", f"optim.lr={opt.lr}", f"optim.min_lr={opt.min_lr}", f"optim.warmup_steps={opt.warmup_steps}"])
    print(f"TFLOP per step: {flops}; arm A total {budget:.1f} TFLOP; scratch: {scratch_steps} steps", flush=True)

    train(core)
    if not (out / "grow-frozen" / "latest").exists():
        grow(out / "core", frozen, initialize_layout(1, 1))
    train(frozen)
    train(finetune)
    train(scratch)

    results = {"tflop_per_step": flops, "budget_tflop": budget,
               "steps": {"core": args.core_steps, "grow-frozen": args.frozen_steps,
                         "grow-finetune": args.finetune_steps, "scratch": scratch_steps},
               "heldout_loss": {run: heldout_loss(out / run, args.eval_num)
                                for run in ("core", "grow-frozen", "grow-finetune", "scratch")}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    subprocess.run([sys.executable, "tools/stage_grid.py", *(str(out / r) for r in
                    ("core", "grow-frozen", "grow-finetune", "scratch")), "--out", str(out / "samples.png")], check=True)
    times = list(results["heldout_loss"]["scratch"]["per_t"])
    print("| run | res | train TFLOP | " + " | ".join(f"t={t}" for t in times) + " | mean |")
    for run, r in results["heldout_loss"].items():
        spent = {"core": args.core_steps * flops["core"], "grow-frozen": args.core_steps * flops["core"]
                 + args.frozen_steps * flops["grow-frozen"], "grow-finetune": budget,
                 "scratch": scratch_steps * flops["grow-finetune"]}[run]
        print(f"| {run} | {r['resolution_px']} | {spent:.0f} | " + " | ".join(f"{r['per_t'][t]:.4f}" for t in times)
              + f" | {r['mean']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
