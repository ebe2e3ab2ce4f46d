"""Training-step throughput: images/s and achieved FLOP/s as a fraction of the measured matmul rate.

    python tools/bench_step.py [--steps 6] [--json bench_step.json]
    python tools/bench_step.py --cases peer --rounds 3 --precisions fp32   # harness vs diffusers UNet
    python tools/bench_step.py --profile --steps 3            # top operators of the `small` step
    python tools/bench_step.py --grown --precisions bf16      # also the demo's grown 128 px step
    python tools/bench_step.py --cases gpu                    # on a GPU (tools/gpu_check.sh runs it)

In one process it measures (1) this machine's dense matrix-multiply rate per precision, (2) the full
training step of the `small` Shallow-UViT at 64 px (batch 32: forward, backward, Megatron DDP and
optimizer) and (3) the core alone at hidden 1024 on 256 tokens (forward + backward), each in fp32
(matmul precision "medium") and bf16 (Megatron bf16 weights, fp32 main weights). FLOPs are counted
by torch's FlopCounterMode (attention included); a rate is stated against the matmul rate of the
same precision, measured in the same run.

GPU cases (`--cases gpu`, bf16 only): the matmul rate at 8192^3, the `small` step at batch 256 and the
core alone at the 2b and 8b widths (hidden 2048 and 4096, a few layers each, 256 tokens), with the
environment (torch, CUDA, NCCL, GPU name).

Peer comparison (`--cases peer`): the same kind of step for diffusers' UNet2DConditionModel in
pixel-space configurations sized like two harness sizes (PEER_SIZES: 8.48 M against `small`'s
8.43 M, 49.6 M against `base`'s 50.0 M), cross-attending to a 16-token, 128-d text context, each
alternated with the harness step of its size (--rounds) and compared in images/s. Its step: forward
(bf16: under autocast, fp32 weights), v-MSE in fp32, backward, gradient clipping, fused AdamW. The
harness step runs its own learned text encoder (inside its parameter count), the Megatron schedule,
DDP and the distributed optimizer (bf16: bf16 weights, fp32 main weights).
diffusers is a bench-only extra (pip install diffusers); without it the peer case is skipped.

`--profile` prints torch.profiler's table of the `small` step's top operators instead; `--compile`
runs the harness steps with train.compile=true (harness/model/compiled.py).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from harness.config import load
from harness.distributed.launch import init_distributed
from harness.eval.flops import count_flops, machine_name, matmul_tflops
from harness.model.core import Core, core_transformer_config
from harness.parallel.layout import device, initialize_layout
from harness.train.synthetic import synthetic_step

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
GROWN = dict(arch="grown", res=128, batch=8)     # the demo's grow stages (configs/demo/grow-*.yaml)
# diffusers UNet2DConditionModel in pixel space, two sizes, each paired with the harness size it matches.
PEER_UNET = dict(sample_size=64, in_channels=3, out_channels=3,
                 down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                 cross_attention_dim=128, attention_head_dim=8)
PEER_SIZES = {"small": dict(block_out_channels=(32, 64, 128, 160), layers_per_block=1),     # 8.48 M
              "base": dict(block_out_channels=(64, 128, 256, 320), layers_per_block=2)}     # 49.6 M


def _timed(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):                         # a compiled step compiles and recompiles here
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _train_step(precision: str, batch: int, size: str, res: int, compile_: bool = False, arch: str = "shallow"):
    """(step, model): the full harness training step (Megatron schedule, DDP, optimizer) on random data."""
    stage = "core" if arch == "shallow" else "grow-finetune"       # every parameter trains in both
    cfg = load(None, [f"model.size={size}", f"model.arch={arch}", f"train.stage={stage}",
                      f"model.resolution_px={res}", f"parallel.micro_batch={batch}",
                      f"parallel.global_batch={batch}", f"train.precision={precision}", "train.matmul_precision=medium",
                      f"train.compile={compile_}"])
    return synthetic_step(cfg, initialize_layout(1, 1))


def bench_train_step(precision: str, steps: int, batch: int = 32, size: str = "small", res: int = 64,
                     compile_: bool = False, arch: str = "shallow") -> dict:
    """One full harness training step, timed, with its FLOPs counted."""
    step, model = _train_step(precision, batch, size, res, compile_, arch)
    with torch._dynamo.config.patch(disable=True):  # counted eager: compiled kernels bypass the counter
        flops = count_flops(step)
    seconds = _timed(step, steps, warmup=2 if compile_ else 1)
    return {"what": f"{size} {arch} {res}px train step, batch {batch}" + (", compiled" if compile_ else ""), "precision": precision,
            "params": sum(p.numel() for p in model.parameters()), "seconds_per_step": seconds,
            "images_per_s": batch / seconds, "tflop_per_step": flops / 1e12, "tflops": flops / seconds / 1e12}


def profile_train_step(precision: str, steps: int = 3, batch: int = 32, size: str = "small", res: int = 64,
                       compile_: bool = False, arch: str = "shallow", rows: int = 15) -> str:
    """torch.profiler's table of the step's top operators by self time (after one warm-up step)."""
    step, _ = _train_step(precision, batch, size, res, compile_, arch)
    step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def bench_core(precision: str, steps: int, hidden: int = 1024, layers: int = 2, batch: int = 8, grid: int = 16) -> dict:
    """The core alone (Megatron layers) at `hidden` on grid*grid tokens: forward + backward."""
    initialize_layout(1, 1)
    dtype, dev = PRECISIONS[precision], device()
    config = core_transformer_config(hidden=hidden, layers=layers, heads=hidden // 64, dtype=dtype)
    core = Core(config, channels=hidden, grid=grid, layer_ids=range(layers)).to(dev, dtype)
    x = torch.randn(batch, hidden, grid, grid, device=dev, dtype=dtype)
    cond = torch.randn(batch, hidden, device=dev, dtype=dtype)
    context = torch.randn(batch, 16, hidden, device=dev, dtype=dtype)
    valid = torch.ones(batch, 16, dtype=torch.bool, device=dev)

    def step():
        hidden_states, mod = core.embed(x, cond)
        core.head(core.run_layers(hidden_states, mod, context, valid)).float().pow(2).mean().backward()
    flops = count_flops(step)
    seconds = _timed(step, steps)
    return {"what": f"core alone: hidden {hidden}, {layers} layers, {grid * grid} tokens, batch {batch}",
            "precision": precision, "seconds_per_step": seconds, "tokens_per_s": batch * grid * grid / seconds,
            "tflop_per_step": flops / 1e12, "tflops": flops / seconds / 1e12}


def bench_peer(steps: int, precision: str, size: str = "small", batch: int = 32, res: int = 64) -> dict | None:
    """The same training step for diffusers' UNet2DConditionModel (PEER_UNET at PEER_SIZES[size]): fp32,
    or bf16 autocast; None without diffusers."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        print("peer case skipped: diffusers is not installed (bench-only extra: pip install diffusers)")
        return None
    dev = device()
    torch.manual_seed(0)
    model = UNet2DConditionModel(**PEER_UNET, **PEER_SIZES[size]).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(dev)
    target = torch.randn(batch, 3, res, res, generator=g).to(dev)
    t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    context = torch.randn(batch, 16, 128, generator=g).to(dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            v = model(x, t, encoder_hidden_states=context).sample
        loss = (v.float() - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    flops = count_flops(step)
    seconds = _timed(step, steps)
    params = sum(p.numel() for p in model.parameters())
    return {"what": f"diffusers UNet {params / 1e6:.1f} M {res}px train step, batch {batch}", "precision": precision,
            "params": params, "seconds_per_step": seconds,
            "images_per_s": batch / seconds, "tflop_per_step": flops / 1e12, "tflops": flops / seconds / 1e12}


def peer_pair(size: str, precision: str, steps: int, rounds: int, compile_: bool) -> tuple[dict, dict] | None:
    """(harness, diffusers) steps of about the same size. On a shared machine the load changes between
    cases: the two alternate `rounds` times and each keeps its best."""
    ours, peer = bench_train_step(precision, steps, size=size, compile_=compile_), bench_peer(steps, precision, size)
    if peer is None:
        return None
    for _ in range(rounds - 1):
        peer = min(peer, bench_peer(steps, precision, size), key=lambda r: r["seconds_per_step"])
        ours = min(ours, bench_train_step(precision, steps, size=size, compile_=compile_),
                   key=lambda r: r["seconds_per_step"])
    print(f"harness / diffusers ({size}, {precision}, batch 32, 64 px): "
          f"params {ours['params'] / 1e6:.2f} M / {peer['params'] / 1e6:.2f} M, "
          f"FLOP per step {ours['tflop_per_step']:.3f} / {peer['tflop_per_step']:.3f} T, "
          f"images/s ratio {ours['images_per_s'] / peer['images_per_s']:.2f}, "
          f"FLOP/s ratio {ours['tflops'] / peer['tflops']:.2f}", flush=True)
    return ours, peer


GPU_CORES = ({"hidden": 2048, "layers": 4, "batch": 64}, {"hidden": 4096, "layers": 2, "batch": 32})


def environment() -> dict:
    """What the numbers were measured with."""
    env = {"torch": torch.__version__, "device": str(device()), "machine": machine_name()}
    if torch.cuda.is_available():
        env.update(cuda=torch.version.cuda, nccl=".".join(map(str, torch.cuda.nccl.version())),
                   gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count())
    return env


def gpu_rows(steps: int) -> list[dict]:
    """The `gpu` cases: bf16 `small` step at batch 256 and the core at the 2b and 8b widths."""
    rows = [bench_train_step("bf16", steps, batch=256)]
    rows += [bench_core("bf16", steps, **shape) for shape in GPU_CORES]
    return rows


def main(argv: list[str] | None = None) -> int:
    from harness import warnings_filter

    warnings_filter.install()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per case")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--cases", choices=("all", "peer", "gpu"), default="all",
                        help="peer: only the harness steps and their diffusers peers; gpu: the GPU cases")
    parser.add_argument("--rounds", type=int, default=1, help="alternate each harness step and its peer this often")
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--peer-sizes", nargs="+", choices=tuple(PEER_SIZES), default=list(PEER_SIZES))
    parser.add_argument("--compile", action="store_true", help="the harness steps with train.compile=true")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top operators of the `small` 64 px step (and, with --grown, "
                             "the grown 128 px step) per precision, and stop")
    parser.add_argument("--grown", action="store_true",
                        help="also the demo's grow step: `small` grown to 128 px (3 new levels), batch 8")
    args = parser.parse_args(argv)
    init_distributed()
    torch.set_float32_matmul_precision("medium")
    header = f"machine: {machine_name()}  torch {torch.__version__}  threads {torch.get_num_threads()}"
    if args.profile:
        print(header)
        for name in args.precisions:
            print(f"\n`small` 64 px train step, batch 32, {name}, {args.steps} steps profiled:\n"
                  f"{profile_train_step(name, args.steps, compile_=args.compile)}", flush=True)
            if args.grown:
                print(f"\n`small` grown {GROWN['res']} px train step, batch {GROWN['batch']}, {name}, "
                      f"{args.steps} steps profiled:\n"
                      f"{profile_train_step(name, args.steps, **GROWN, compile_=args.compile)}", flush=True)
        return 0
    if args.cases == "gpu":
        return _gpu_main(args)
    peak = {name: matmul_tflops(PRECISIONS[name], device=device()) for name in args.precisions}
    rows, ratios = [], {}
    for precision in args.precisions:
        if args.cases == "all":
            rows += [bench_train_step(precision, args.steps, compile_=args.compile), bench_core(precision, args.steps)]
            if args.grown:
                rows.append(bench_train_step(precision, args.steps, **GROWN, compile_=args.compile))
        for size in args.peer_sizes if args.cases == "peer" else ():
            if pair := peer_pair(size, precision, args.steps, args.rounds, args.compile):
                rows += pair
                ratios[f"{size} {precision}"] = pair[0]["images_per_s"] / pair[1]["images_per_s"]
    print(header)
    print("matmul rate (2048^3): " + ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in peak.items()))
    _report(rows, peak)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_name(), "threads": torch.get_num_threads(), "matmul_tflops": peak,
                       "results": rows, "peer_images_per_s_ratio": ratios}, f, indent=2)
    return 0


def _report(rows: list[dict], peak: dict) -> None:
    for r in rows:
        r["fraction_of_matmul"] = r["tflops"] / peak[r["precision"]]
        rate = f"{r['images_per_s']:.1f} img/s" if "images_per_s" in r else f"{r['tokens_per_s']:.0f} tok/s"
        print(f"{r['what']:<58} {r['precision']}: {rate:>12}  {r['tflops']:.3f} TFLOP/s "
              f"= {100 * r['fraction_of_matmul']:.0f}% of the {r['precision']} matmul rate")


def _gpu_main(args) -> int:
    if not torch.cuda.is_available():
        print("gpu cases skipped: no CUDA device visible")
        return 0
    env = environment()
    peak = {"bf16": matmul_tflops(torch.bfloat16, n=8192, device=device())}
    rows = gpu_rows(args.steps)
    print("  ".join(f"{k} {v}" for k, v in env.items()))
    print(f"bf16 matmul rate (8192^3): {peak['bf16']:.1f} TFLOP/s")
    _report(rows, peak)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "matmul_tflops": peak, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
