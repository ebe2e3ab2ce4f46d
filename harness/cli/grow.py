"""Grow a stage's checkpoint into the next stage's step-0 checkpoint (rules: harness/growth/rules.py).

    python tools/grow.py --source runs/demo/core --config configs/demo/grow-frozen.yaml
    torchrun --nproc_per_node 8 tools/grow.py --source CKPT --config CFG parallel.tp=2 parallel.pp=2

The target model and layout come from --config (+ overrides); the result goes to its
train.run_dir, so `harness-train --config CFG` then starts the stage from it. The core and the
text/time conditioning (and, from a grown model, every existing level) are copied bit for bit;
the rest of the source is dropped (listed below); every key is accounted for or it is an error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from harness.checkpoint import io
from harness.checkpoint.rundir import RunDirLocked
from harness.config import ConfigError, load
from harness.distributed.launch import init_distributed
from harness.growth.grow import grow
from harness.growth.rules import GrowthError
from harness.parallel.layout import initialize_layout
from harness.train.start import hold_run_dir


def _modules(names) -> str:
    counts = Counter(".".join(n.split(".")[:2]) for n in names)
    return ", ".join(f"{m} ({c})" for m, c in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="checkpoint, or run directory (its latest)")
    parser.add_argument("--config", required=True, help="the next stage's config")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema",
                        help="source weights to carry: the EMA (default, what samples best) or the raw ones")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = init_distributed(cfg.parallel.timeout_s)
    layout = initialize_layout(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed, cfg.parallel.timeout_s)
    try:
        lock = hold_run_dir(Path(cfg.train.run_dir), layout.rank)
    except RunDirLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if (Path(cfg.train.run_dir) / io.LATEST).exists():
            print(f"error: train.run_dir {cfg.train.run_dir} already holds a checkpoint; growing would start it over",
                  file=sys.stderr)
            return 2
        start = time.perf_counter()
        path, plan = grow(args.source, cfg, layout, weights=args.weights)
        seconds = time.perf_counter() - start
    except (GrowthError, io.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
    if info.rank == 0:
        print(f"carried {len(plan.carried)} tensors bit for bit: {_modules(plan.carried)}")
        print(f"dropped {len(plan.dropped)}: {_modules(plan.dropped)}")
        print(f"new {len(plan.new)}: {_modules(plan.new)}")
        size = io.size_bytes(path)
        print(f"wrote {path} (stage {cfg.train.stage}, {cfg.model.arch} {cfg.model.resolution_px} px, "
              f"layout tp={layout.tp} pp={layout.pp} dp={layout.dp}; {size / 1e6:.1f} MB) in {seconds:.2f} s: "
              f"{size / 1e6 / seconds:.0f} MB/s")
    return 0


def cli() -> None:
    """The console script `harness-grow` (setup.cfg) and `python tools/grow.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
