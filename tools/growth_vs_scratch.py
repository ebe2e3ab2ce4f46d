"""The paper's second claim at small scale: growing a pre-trained core beats training the grown
architecture from scratch for the same training compute.

    python tools/growth_vs_scratch.py --reuse runs/demo              # arm A = the demo's finished stages
    python tools/growth_vs_scratch.py --out runs/gvs --core-steps 600 --frozen-steps 300 --finetune-steps 300

Arm A (greedy growing, configs/demo/*): core at 64 px -> grow -> grow-frozen -> grow-finetune at
128 px, either trained here for the given steps or taken from finished runs (`--reuse DIR` with
DIR/core, DIR/grow-frozen, DIR/grow-finetune; their steps come from their checkpoints).
Arm B: the same 128 px architecture from scratch, with the core's learning-rate settings (its
warm-up at most a tenth of the steps, as a time-budgeted stage plans it), for as many steps as make
its training FLOPs equal arm A's total. FLOPs per step are counted
(FlopCounterMode) on one real step of each stage's configuration (frozen layers skip their weight
gradients). Both arms are scored by the held-out v-loss at fixed noise levels and seeds
(harness/eval/eval_loss.py); one PNG shows the same held-out captions from every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness.checkpoint import io
from harness.config import from_dict, load
from harness.data.reader import ShardedReader, to_model_range
from harness.distributed.launch import init_distributed
from harness.eval.eval_loss import per_sample_losses, summarize
from harness.eval.flops import count_flops
from harness.eval.load import load_for_inference
from harness.growth.grow import grow
from harness.growth.rules import rule_for
from harness.parallel.layout import initialize_layout
from harness.train.budget import fitted_warmup
from harness.train.loop import train
from harness.train.synthetic import synthetic_step

ARM_A = ("core", "grow-frozen", "grow-finetune")


def frozen_in(stage: str, metas: dict) -> tuple[str, ...]:
    """What `stage` keeps fixed: in grow-frozen, what the growth rule from the core's architecture to
    grow-frozen's carries (harness/growth/rules.py, as tools/grow.py freezes it)."""
    if stage != "grow-frozen":
        return ()
    arch = {s: metas[s]["config"]["model"]["arch"] for s in ("core", "grow-frozen")}
    return rule_for(arch["core"], arch["grow-frozen"]).carry


def step_tflops(cfg, frozen: tuple[str, ...] = ()) -> float:
    """Training FLOPs of one optimizer step of `cfg` (counted on a real step, random data)."""
    step, _ = synthetic_step(cfg, initialize_layout(1, 1), frozen_prefixes=frozen)
    return count_flops(step) / 1e12


def heldout_loss(run: Path, num: int) -> dict:
    """Held-out v-loss at fixed t and noise of a run's latest checkpoint (EMA weights)."""
    loaded = load_for_inference(run)
    cfg = loaded.cfg
    with ShardedReader(cfg.data.heldout_path, resolution_px=cfg.model.resolution_px, global_batch=1,
                       verify_checksums=False) as heldout:
        idx = np.linspace(0, len(heldout) - 1, min(num, len(heldout))).round().astype(int)
        batch = heldout.read(idx)
    x0 = to_model_range(batch.images)
    losses = per_sample_losses(loaded.model, cfg, loaded.layout, x0, loaded.text.encode(batch), list(idx))
    return {"step": loaded.meta["step"], "resolution_px": cfg.model.resolution_px, **summarize(losses)}


def train_arm_a(out: Path, steps: dict[str, int], common: list[str]) -> None:
    for stage in ARM_A:
        extra = [f"train.init_from={out / 'grow-frozen'}"] if stage == "grow-finetune" else []
        cfg = load(f"configs/demo/{stage}.yaml", common + [f"train.run_dir={out / stage}", f"train.steps={steps[stage]}",
                                                           f"optim.decay_steps={steps[stage]}", *extra])
        if stage == "grow-frozen" and not (out / stage / io.LATEST).exists():
            grow(out / "core", cfg, initialize_layout(1, 1))
        train(cfg)


def main(argv: list[str] | None = None) -> int:
    from harness import warnings_filter

    warnings_filter.install()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/growth_vs_scratch"))
    parser.add_argument("--reuse", type=Path, help="take arm A from DIR/{core,grow-frozen,grow-finetune}")
    parser.add_argument("--core-steps", type=int, default=600)
    parser.add_argument("--frozen-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--eval-num", type=int, default=169, help="held-out images for the eval loss")
    parser.add_argument("overrides", nargs="*", help="applied to every stage trained here, e.g. data paths")
    args = parser.parse_args(argv)
    init_distributed()
    common = ["train.time_limit_minutes=0", "train.sample_every_steps=0"] + args.overrides
    arm_a = {s: (args.reuse or args.out) / s for s in ARM_A}
    if args.reuse is None:
        train_arm_a(args.out, {"core": args.core_steps, "grow-frozen": args.frozen_steps,
                               "grow-finetune": args.finetune_steps}, common)
    metas = {s: io.read_meta(io.resolve(run)) for s, run in arm_a.items()}
    flops = {s: step_tflops(from_dict(m["config"]), frozen_in(s, metas)) for s, m in metas.items()}
    steps = {s: m["step"] for s, m in metas.items()}
    budget = sum(steps[s] * flops[s] for s in ARM_A)

    finetune = from_dict(metas["grow-finetune"]["config"])
    flops["scratch"] = step_tflops(finetune)
    steps["scratch"] = math.ceil(budget / flops["scratch"])
    core_optim = from_dict(metas["core"]["config"]).optim
    scratch = from_dict(metas["grow-finetune"]["config"], "scratch", common + [
        f"train.run_dir={args.out / 'scratch'}", "train.init_from=", f"train.steps={steps['scratch']}",
        f"optim.decay_steps={steps['scratch']}", f"optim.lr={core_optim.lr}", f"optim.min_lr={core_optim.min_lr}",
        f"optim.warmup_steps={fitted_warmup(core_optim.warmup_steps, steps['scratch'])}"])
    print(f"TFLOP per step {flops}; arm A steps {steps}; {budget:.1f} TFLOP each arm", flush=True)
    train(scratch)

    runs = {**arm_a, "scratch": args.out / "scratch"}
    results = {"tflop_per_step": flops, "steps": steps, "budget_tflop": budget,
               "heldout_loss": {name: heldout_loss(run, args.eval_num) for name, run in runs.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    subprocess.run([sys.executable, "tools/stage_grid.py", *map(str, runs.values()), "--out",
                    str(args.out / "samples.png")], check=True)
    spent, total = {}, 0.0
    for s in ARM_A:
        total += steps[s] * flops[s]
        spent[s] = total
    spent["scratch"] = steps["scratch"] * flops["scratch"]
    times = list(results["heldout_loss"]["scratch"]["per_t"])
    print("| run | px | steps | cumulative TFLOP | " + " | ".join(f"t={t}" for t in times) + " | mean |")
    for name, r in results["heldout_loss"].items():
        print(f"| {name} | {r['resolution_px']} | {steps[name]} | {spent[name]:.0f} | "
              + " | ".join(f"{r['per_t'][t]:.4f}" for t in times) + f" | {r['mean']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
