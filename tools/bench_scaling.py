"""Scaling efficiency of parallel layouts: images/s and model FLOP/s per layout, against one process.

    python tools/bench_scaling.py --out runs/bench_scaling              # local: torchrun per layout
    srun ... python tools/bench_scaling.py --worker --tp 2 --pp 1 --out DIR   # one layout, any launcher
    python tools/bench_scaling.py --aggregate --out DIR                # CSV + PNG from the worker files
    python tools/bench_scaling.py --layouts 1x1,1x1+overlap              # DP=2 with and without overlap

Every layout trains the same model on the same global batch of random data (the full harness step:
Megatron schedule, DDP, optimizer), so total FLOPs per step are equal and efficiency is simply
images/s(layout) / images/s(baseline), the baseline being the one-process run on the same machine.
Model FLOPs per step are counted once with FlopCounterMode (attention included); FLOP/s are model
FLOP/s (replicated convolutions on TP ranks are not counted twice). A layout ending in `+overlap`
runs with parallel.overlap_grad_reduce and parallel.overlap_param_gather (Megatron DDP buckets of
parallel.bucket_size elements, here --bucket-size).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

LAYOUTS = ("1x1", "2x1", "1x2")   # TPxPP; DP fills the rest of the world


def worker(args) -> None:
    """Time `args.steps` training steps at (tp, pp) in the launched world; rank 0 writes a JSON row."""
    from harness.config import load
    from harness.distributed.launch import init_distributed
    from harness.eval.flops import count_flops
    from harness.parallel.layout import device, initialize_layout
    from harness.train.synthetic import synthetic_step

    info = init_distributed()
    cfg = load(None, [f"model.size={args.size}", f"model.resolution_px={args.resolution}", f"parallel.tp={args.tp}",
                      f"parallel.pp={args.pp}", f"parallel.global_batch={args.global_batch}",
                      f"parallel.micro_batch={args.micro_batch}", f"train.precision={args.precision}",
                      f"parallel.overlap_grad_reduce={args.overlap}", f"parallel.overlap_param_gather={args.overlap}",
                      f"parallel.bucket_size={args.bucket_size if args.overlap else 0}"])
    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    layout = initialize_layout(args.tp, args.pp)
    dev = device()
    step, _ = synthetic_step(cfg, layout)
    for _ in range(args.warmup):
        step()
    torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.distributed.barrier()
    seconds = (time.perf_counter() - start) / args.steps
    if info.rank == 0:
        row = {"layout": f"tp{layout.tp}-pp{layout.pp}-dp{layout.dp}" + ("-overlap" if args.overlap else ""),
               "overlap": args.overlap, "world": layout.world, "tp": layout.tp,
               "pp": layout.pp, "dp": layout.dp, "size": args.size, "resolution": args.resolution, "precision": args.precision,
               "global_batch": args.global_batch, "seconds_per_step": seconds, "images_per_s": args.global_batch / seconds,
               "device": str(dev), "threads_per_rank": torch.get_num_threads()}
        if layout.world == 1:
            row["tflop_per_step"] = count_flops(step) / 1e12
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{row['layout']}.json").write_text(json.dumps(row, indent=2))


def aggregate(out: Path) -> list[dict]:
    """Join the worker rows: efficiency against the one-process row; write scaling.csv and scaling.png."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("tp*-pp*-dp*.json"))]
    base = next((r for r in rows if r["world"] == 1), None)
    if base is None:
        raise SystemExit(f"{out}: no one-process (tp1-pp1-dp1) row to compare against")
    for r in rows:
        r["tflop_per_step"] = base["tflop_per_step"]
        r["model_tflops"] = base["tflop_per_step"] / r["seconds_per_step"]
        r["efficiency"] = r["images_per_s"] / base["images_per_s"]
    rows.sort(key=lambda r: (r["world"], r["layout"]))
    keys = ["layout", "world", "tp", "pp", "dp", "images_per_s", "model_tflops", "efficiency", "seconds_per_step",
            "size", "resolution", "precision", "global_batch", "device", "threads_per_rank"]
    with open(out / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, out / "scaling.png")
    for r in rows:
        print(f"{r['layout']:<16} {r['images_per_s']:8.1f} img/s  {r['model_tflops']:.3f} TFLOP/s  "
              f"efficiency {r['efficiency']:.2f}")
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    names = [r["layout"] for r in rows]
    bars = ax.bar(names, [r["efficiency"] for r in rows], color="#4C72B0")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['images_per_s']:.1f} img/s",
                ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("throughput / one process")
    ax.set_title(f"{rows[0]['size']} {rows[0]['resolution']}px, global batch {rows[0]['global_batch']}, {rows[0]['device']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from harness import warnings_filter

    warnings_filter.install()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_scaling")
    parser.add_argument("--worker", action="store_true", help="time one layout in the launched world")
    parser.add_argument("--aggregate", action="store_true", help="only join existing worker rows")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--nprocs", type=int, default=2, help="local mode: processes for the parallel layouts")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="local mode: TPxPP list at --nprocs processes")
    parser.add_argument("--size", default="small")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--overlap", action="store_true", help="worker: overlap the DP gradient reduce and weight gather")
    parser.add_argument("--bucket-size", type=int, default=1_000_000, help="DDP bucket elements with --overlap")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    if not args.aggregate:
        common = [sys.argv[0], "--worker", "--out", str(out), "--size", args.size, "--resolution", str(args.resolution),
                  "--precision", args.precision, "--global-batch", str(args.global_batch),
                  "--micro-batch", str(args.micro_batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                  "--bucket-size", str(args.bucket_size)]
        torchrun = str(Path(sys.executable).parent / "torchrun")
        runs = [(1, "1x1")] + [(args.nprocs, spec) for spec in args.layouts.split(",")]
        for nprocs, spec in runs:
            spec, overlap = spec.removesuffix("+overlap"), spec.endswith("+overlap")
            tp, pp = spec.split("x")
            # The one-process baseline uses every core; each of N processes gets 1/N of them.
            threads = str(max(1, (os.cpu_count() or 1) // nprocs))
            print(f"[bench_scaling] {nprocs} process(es), tp={tp} pp={pp}, {threads} thread(s) each", flush=True)
            subprocess.run([torchrun, "--standalone", f"--nproc_per_node={nprocs}", *common, "--tp", tp, "--pp", pp,
                            *(["--overlap"] if overlap else [])],
                           check=True, env={**os.environ, "OMP_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"})
    aggregate(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
