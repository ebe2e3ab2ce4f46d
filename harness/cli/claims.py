"""The paper's three claims at small scale, on the emoji data (harness/experiments/claims.py).

    python tools/claims.py growth --out runs/claims/growth --seeds 0 1 2 --ablations     # claims 2 and 3
    python tools/claims.py sizes --out runs/claims/sizes --sizes small-128 small small-512  # claim 1

Every run is seeded (weights, noise and data order) and kept under --out; a rerun skips finished
runs and scores again. Writes OUT/results.json, OUT/tables.md and the PNG plots.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness.config import load
from harness.distributed.launch import init_distributed
from harness.experiments import claims, plots
from harness.experiments.score import Scorer


def _write(out: Path, results: dict, started: float) -> None:
    results["seconds"] = round(time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "tables.md").write_text(plots.table(results["points"]) + "\n")
    print(f"[claims] {results['seconds']} s; wrote {out}/results.json, tables.md and the plots")


def main(argv: list[str] | None = None) -> int:
    from harness import warnings_filter

    warnings_filter.install()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="claim", required=True)
    for name in ("growth", "sizes"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, default=Path(f"runs/claims/{name}"))
        p.add_argument("--every", type=int, default=25, help="steps between scored checkpoints")
        p.add_argument("--eval-num", type=int, default=64, help="held-out images of the eval loss")
        p.add_argument("--sample-num", type=int, default=32, help="held-out captions sampled for FID and alignment")
        p.add_argument("--sample-steps", type=int, default=20)
        p.add_argument("--probe-px", type=int, help="one alignment probe, fitted at this resolution, for every model")
        p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data paths")
    g = sub.choices["growth"]
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--core-steps", type=int, default=200)
    g.add_argument("--frozen-steps", type=int, default=50)
    g.add_argument("--finetune-steps", type=int, default=50)
    g.add_argument("--ablations", action="store_true", help="fine-tune lr, no frozen phase, default init (seed 0)")
    g.add_argument("--ablation-lr", type=float, default=1e-3, help="the other fine-tune learning rate")
    z = sub.choices["sizes"]
    z.add_argument("--sizes", nargs="+", default=["small-128", "small", "small-512"])
    z.add_argument("--budget-tflop", type=float, default=40.0, help="training FLOPs of every size")
    z.add_argument("--points", type=int, default=4, help="scored checkpoints per size")
    z.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    init_distributed()
    data = load(claims.config("core"), args.overrides).data
    scorer = Scorer(data.heldout_path, data.path, args.eval_num, args.sample_num, args.sample_steps,
                    probe_px=args.probe_px)
    if args.claim == "growth":
        settings = claims.GrowthSettings(args.out, args.seeds, args.core_steps, args.frozen_steps, args.finetune_steps,
                                         args.every, args.ablation_lr, args.ablations, args.overrides)
        results = claims.growth(settings, scorer)
        grown_px = load(claims.config("grow-finetune"), args.overrides).model.resolution_px
        plots.plot_curves(results["points"], args.out / "claim2.png",
                          f"grown vs scratch at {grown_px} px, seeds {args.seeds}", resolution=grown_px)
        plots.plot_curves([p for p in results["points"] if p["arm"] == "grown"], args.out / "claim3.png",
                          "grown arm through its stages (core at its own resolution)",
                          metrics=(("top1_at_core_px", "top-1, downsampled to the core's px"),
                                   ("fid_to_core", "FID to the core's samples"), ("eval_loss", "held-out v-loss")))
    else:
        results = claims.sizes(args.out, args.sizes, args.budget_tflop, args.points, args.seed, args.overrides, scorer)
        plots.plot_curves(results["points"], args.out / "claim1.png",
                          f"core sizes at equal training FLOPs ({args.budget_tflop:g} TFLOP)")
    _write(args.out, results, started)
    return 0


def cli() -> None:
    """`python tools/claims.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
