"""Training stall per checkpoint save, synchronous vs asynchronous (train.async_save).

    python tools/bench_save.py [--size small] [--steps 12] [--every 3] [--out runs/bench_save]

Trains the same stage twice in this process on the demo data (data/emoji), saving every --every steps,
once with train.async_save=false and once with true, and reads the stall each save caused from the
run's log.jsonl (`save_s`: the time the training loop waited for the save call; with async saves the
files are written by background processes while the next steps run, and the next save first waits
for the one in flight). Prints the mean stall and the mean step time of each run, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path


def run(out: Path, size: str, steps: int, every: int, asynchronous: bool) -> dict:
    from harness.config import load
    from harness.train.loop import train
    run_dir = out / ("async" if asynchronous else "sync")
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load("configs/demo/core.yaml", [f"model.size={size}", f"train.run_dir={run_dir}", f"train.steps={steps}",
                                          f"train.ckpt_every_steps={every}", "train.log_every_steps=1", "train.keep_checkpoints=2",
                                          "train.sample_every_steps=0", "train.time_limit_minutes=0",
                                          "parallel.global_batch=8", "parallel.micro_batch=8", "train.precision=fp32",
                                          f"train.async_save={str(asynchronous).lower()}"])
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    stalls = [line["save_s"] for line in lines if "save_s" in line][1:]   # the first save starts the writers
    size_mb = sum(f.stat().st_size for f in (run_dir / f"step_{steps:07d}").rglob("*") if f.is_file()) / 1e6
    return {"async": asynchronous, "mean_stall_s": statistics.mean(stalls), "saves": len(stalls), "wall_s": wall,
            "checkpoint_mb": size_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3, help="steps between saves")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_save"))
    args = parser.parse_args(argv)
    from harness.distributed.launch import init_distributed
    from harness.eval.flops import machine_name
    init_distributed()
    rows = [run(args.out, args.size, args.steps, args.every, asynchronous) for asynchronous in (False, True)]
    print(f"{args.size}, a save every {args.every} of {args.steps} steps; {machine_name()}")
    for r in rows:
        print(f"{'async' if r['async'] else 'sync ':<5}  stall per save {r['mean_stall_s']:.3f} s over {r['saves']} saves "
              f"({r['checkpoint_mb']:.0f} MB each), run {r['wall_s']:.1f} s")
    print(f"async / sync stall: {rows[1]['mean_stall_s'] / rows[0]['mean_stall_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
