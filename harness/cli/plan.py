"""Plan a (TP, PP, DP, micro-batch) layout for a model size on a cluster: memory per GPU, traffic, step time.

    python tools/plan.py --size 8b --gpus-per-node 8 --gpu-mem-gb 80 --nodes 4 --interconnect nvlink-ib
    python tools/plan.py --size 8b --nodes 16 --resolution 1024 --micro-batch 1 2 --png plan.png
    python tools/plan.py --size 8b --nodes 16 --recompute core --sequence-parallel   # the cluster config's

Builds the model on the meta device (no memory), counts its parameters per module, and for every
layout that divides the GPUs (TP inside a node and dividing the heads, PP <= layers) estimates the
memory of the busiest rank and the step time with harness/parallel/plan.py (its docstring states the
model: what is counted, the bandwidth classes, the pipeline bubble). Layouts that fit come first,
fastest first. Estimates, not measurements: the memory model is checked against a real CPU step of
the tiny model (tests/unit/test_plan.py), the times are FLOPs / (peak x efficiency) plus bytes / bandwidth.
"""

from __future__ import annotations

import argparse

from harness.config import ModelConfig
from harness.distributed.launch import init_distributed
from harness.parallel.layout import initialize_layout
from harness.parallel.plan import (
    INTERCONNECTS,
    Cluster,
    GiB,
    Shape,
    build_inventory,
    plan,
)

COLUMNS = ("TP", "PP", "DP", "mb", "m", "params/GPU", "weights", "grads", "optim", "EMA", "activ.", "total GiB",
           "TP GB", "PP GB", "DP GB", "bubble", "step s", "img/s")


def row(e, global_batch: int) -> list[str]:
    g = lambda b: f"{b / GiB:.1f}"  # noqa: E731
    return [str(e.tp), str(e.pp), str(e.dp), str(e.micro_batch), str(e.num_micro), f"{e.params_per_rank / 1e6:,.0f}M",
            g(e.weights_bytes), g(e.grads_bytes), g(e.optimizer_bytes), g(e.ema_bytes),
            g(e.activation_bytes + e.workspace_bytes), g(e.memory_bytes), f"{e.tp_bytes / 1e9:.1f}",
            f"{e.pp_bytes / 1e9:.1f}", f"{e.dp_bytes / 1e9:.1f}", f"{e.bubble:.0%}", f"{e.step_s:.2f}",
            f"{global_batch / e.step_s:,.0f}"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def plot(path: str, estimates, title: str) -> None:
    """Stacked memory bars of the listed layouts, step time on a second axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"TP{e.tp} PP{e.pp} DP{e.dp}\nmb{e.micro_batch}" for e in estimates]
    parts = {"weights": "weights_bytes", "grads": "grads_bytes", "optimizer": "optimizer_bytes", "EMA": "ema_bytes",
             "activations": "activation_bytes", "workspace": "workspace_bytes"}
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(estimates)), 4.5))
    bottom = [0.0] * len(estimates)
    for name, attr in parts.items():
        vals = [getattr(e, attr) / GiB for e in estimates]
        ax.bar(labels, vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("GiB per GPU (busiest stage)")
    ax.tick_params(axis="x", labelsize=7)
    ax2 = ax.twinx()
    ax2.plot(labels, [e.step_s for e in estimates], "ko-", label="step time")
    ax2.set_ylabel("estimated step time (s)")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", required=True, help="tiny, small, base, mid, 2b, 4b, 8b")
    p.add_argument("--arch", choices=("auto", "shallow", "grown"), default="auto",
                   help="auto: the shallow core model at <= 64 px, the grown model above")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-mem-gb", type=float, default=80.0)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--interconnect", choices=sorted(INTERCONNECTS), default="nvlink-ib")
    p.add_argument("--micro-batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--global-batch", type=int, default=512)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--recompute", choices=("none", "core", "full"), default="none",
                   help="activation recomputation, as parallel.recompute")
    p.add_argument("--recompute-min-px", type=int, default=256, help="as parallel.recompute_min_px (with full)")
    p.add_argument("--sequence-parallel", action="store_true", help="as parallel.sequence_parallel")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak of one GPU in this precision")
    p.add_argument("--efficiency", type=float, default=0.5, help="achieved fraction of the peak")
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--top", type=int, default=12, help="layouts to list")
    p.add_argument("--png", help="also plot the listed layouts' memory and step time here")
    args = p.parse_args(argv)
    arch = args.arch if args.arch != "auto" else ("shallow" if args.resolution <= 64 else "grown")
    cfg = ModelConfig(size=args.size, arch=arch, resolution_px=args.resolution)
    init_distributed()
    initialize_layout(1, 1)
    inv = build_inventory(cfg, vocab_size=args.vocab_size)
    cluster = Cluster(args.gpus_per_node, args.nodes, args.gpu_mem_gb, args.interconnect, args.peak_tflops,
                      args.efficiency)
    estimates = plan(Shape.of(cfg), inv, cluster, args.micro_batch, args.global_batch, precision=args.precision,
                     recompute=args.recompute, recompute_min_px=args.recompute_min_px,
                     sequence_parallel=args.sequence_parallel)
    fit = [e for e in estimates if e.fits]
    print(f"{args.size} {arch} {args.resolution}px: {inv.total:,} parameters (" +
          ", ".join(f"{k} {v:,}" for k, v in inv.groups.items() if k != "total") +
          f"); per core layer {inv.layer_sharded:,} split by TP + {inv.layer_replicated:,} replicated")
    print(f"cluster: {args.nodes} x {args.gpus_per_node} GPUs, {args.gpu_mem_gb:g} GB each "
          f"({cluster.reserve_gb:g} GB reserved), {args.interconnect}; global batch {args.global_batch}, "
          f"{args.precision}; {len(fit)} of {len(estimates)} layouts fit")
    print("memory in GiB per GPU (busiest stage), traffic in GB per GPU per step")
    shown = fit[: args.top] if fit else estimates[: args.top]
    if not fit:
        print("no layout fits; the smallest:")
    print_table([row(e, args.global_batch) for e in shown])
    if args.png and shown:
        plot(args.png, shown, f"{args.size} {arch} {args.resolution}px on {args.nodes}x{args.gpus_per_node} "
             f"{args.gpu_mem_gb:g} GB ({args.interconnect}), global batch {args.global_batch}")
        print(f"wrote {args.png}")
    return 0


def cli() -> None:
    """The console script `harness-plan` (setup.cfg) and `python tools/plan.py`."""
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
