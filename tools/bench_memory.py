"""Peak memory and step time per activation-recomputation mode, next to tools/plan.py's estimate.

    python tools/bench_memory.py [--size small] [--resolution 256] [--batch 4] [--steps 3]

Each mode (parallel.recompute = none, core, full) runs in its own process, so that its peak resident
memory (ru_maxrss) is its own: the stage is built as training builds it (Megatron DDP, distributed
optimizer, EMA) and trains --steps steps of a random batch at the given size (model.arch=grown above
64 px). Printed per mode: seconds per step, peak RSS, and the planner's estimate of tensor memory
(harness/parallel/plan.py; RSS also holds the interpreter and libraries, ~0.5 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("none", "core", "full")


def _config(args, mode: str):
    from harness.config import load
    grown = args.resolution > 64
    return load(None, [f"model.size={args.size}", f"model.resolution_px={args.resolution}",
                       f"model.arch={'grown' if grown else 'shallow'}", f"train.stage={'grow-finetune' if grown else 'core'}",
                       f"parallel.micro_batch={args.batch}", f"parallel.global_batch={args.batch}",
                       f"train.precision={args.precision}", f"parallel.recompute={mode}",
                       f"parallel.recompute_min_px={args.recompute_min_px}"])


def measure(args, mode: str) -> dict:
    """One mode, in this process: seconds per step and peak RSS, plus the planner's estimate."""
    from harness.distributed.launch import init_distributed
    from harness.parallel import plan
    from harness.parallel.costs import Shape
    from harness.parallel.layout import initialize_layout
    from harness.train.synthetic import synthetic_step

    init_distributed()
    cfg = _config(args, mode)
    step, _ = synthetic_step(cfg, initialize_layout(1, 1))
    step()                                                  # warm-up: Adam state exists after it
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    est = plan.estimate(Shape.of(cfg.model), plan.build_inventory(cfg.model), plan.Cluster(gpus_per_node=1), 1, 1,
                        args.batch, args.batch, precision=args.precision, recompute=mode,
                        recompute_min_px=args.recompute_min_px)
    return {"mode": mode, "seconds_per_step": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "estimate_mib": est.memory_bytes / 2**20, "estimate_activations_mib": est.activation_bytes / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--recompute-min-px", type=int, default=128)
    parser.add_argument("--mode", choices=MODES, help="measure this mode in this process (used by the sweep)")
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(measure(args, args.mode)), flush=True)
        return 0
    from harness.eval.flops import machine_name
    print(f"{args.size} at {args.resolution} px, batch {args.batch}, {args.precision}, recompute_min_px "
          f"{args.recompute_min_px}; {machine_name()}")
    base = None
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--mode", mode],
                             capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        base = base or row
        print(f"recompute={mode:<5} {row['seconds_per_step']:6.2f} s/step ({row['seconds_per_step'] / base['seconds_per_step']:.2f}x)"
              f"  peak RSS {row['peak_rss_mib']:7.0f} MiB  planner {row['estimate_mib']:7.0f} MiB "
              f"(activations {row['estimate_activations_mib']:.0f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
