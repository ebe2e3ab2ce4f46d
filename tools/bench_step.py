"""Training-step throughput: images/s and achieved FLOP/s as a fraction of the measured matmul rate.

    python tools/bench_step.py [--steps 6] [--json bench_step.json]
    python tools/bench_step.py --cases peer --rounds 3       # harness vs diffusers UNet, alternated
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

Peer comparison (`--cases peer` runs only it and the harness's bf16 step): the same kind of step
for diffusers' UNet2DConditionModel in a pixel-space configuration sized like `small` (PEER_UNET:
8.48 M parameters vs 8.43 M, 3.99 vs 3.72 forward GFLOP per 64 px image, both counted by the same
FlopCounterMode), cross-attending to a 16-token, 128-d text context. Its step: forward under bf16
autocast (fp32 weights, bf16 matmuls/convolutions), v-MSE in fp32, backward, gradient clipping,
fused AdamW. The harness's step keeps bf16 weights with fp32 main weights in Megatron's optimizer,
runs its own 2-layer text encoder (inside its 8.43 M) and the Megatron schedule and DDP.
diffusers is a bench-only extra (pip install diffusers); without it the peer case is skipped.
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
PEER_UNET = dict(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(32, 64, 128, 160),
                 layers_per_block=1,
                 down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                 cross_attention_dim=128, attention_head_dim=8)


def _timed(fn, steps: int) -> float:
    fn()                                            # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench_train_step(precision: str, steps: int, batch: int = 32, size: str = "small", res: int = 64) -> dict:
    """One full harness training step (Megatron schedule, DDP, optimizer) on random data."""
    cfg = load(None, [f"model.size={size}", f"model.resolution_px={res}", f"parallel.micro_batch={batch}",
                      f"parallel.global_batch={batch}", f"train.precision={precision}", "train.matmul_precision=medium"])
    step, model = synthetic_step(cfg, initialize_layout(1, 1))
    flops = count_flops(step)
    seconds = _timed(step, steps)
    return {"what": f"{size} {res}px train step, batch {batch}", "precision": precision,
            "params": sum(p.numel() for p in model.parameters()), "seconds_per_step": seconds,
            "images_per_s": batch / seconds, "tflop_per_step": flops / 1e12, "tflops": flops / seconds / 1e12}


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


def bench_peer(steps: int, batch: int = 32, res: int = 64) -> dict | None:
    """The same training step for diffusers' UNet2DConditionModel (PEER_UNET), bf16 autocast; None without diffusers."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        print("peer case skipped: diffusers is not installed (bench-only extra: pip install diffusers)")
        return None
    dev = device()
    torch.manual_seed(0)
    model = UNet2DConditionModel(**PEER_UNET).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(dev)
    target = torch.randn(batch, 3, res, res, generator=g).to(dev)
    t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    context = torch.randn(batch, 16, 128, generator=g).to(dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            v = model(x, t, encoder_hidden_states=context).sample
        loss = (v.float() - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    flops = count_flops(step)
    seconds = _timed(step, steps)
    return {"what": f"diffusers UNet2DConditionModel {res}px train step, batch {batch}", "precision": "bf16",
            "params": sum(p.numel() for p in model.parameters()), "seconds_per_step": seconds,
            "images_per_s": batch / seconds, "tflop_per_step": flops / 1e12, "tflops": flops / seconds / 1e12}


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
                        help="peer: only the harness bf16 step and the diffusers peer; gpu: the GPU cases")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the harness bf16 step and the peer this often")
    args = parser.parse_args(argv)
    init_distributed()
    torch.set_float32_matmul_precision("medium")
    if args.cases == "gpu":
        return _gpu_main(args)
    peak = {name: matmul_tflops(dtype, device=device()) for name, dtype in PRECISIONS.items()}
    rows = []
    for precision in PRECISIONS if args.cases == "all" else ["bf16"]:
        rows.append(bench_train_step(precision, args.steps))
        if args.cases == "all":
            rows.append(bench_core(precision, args.steps))
    ours = next(r for r in rows if r["precision"] == "bf16" and "images_per_s" in r)
    peer = bench_peer(args.steps)
    # On a shared machine the load changes between cases: alternate the two steps and keep each one's best.
    for _ in range(args.rounds - 1 if peer is not None else 0):
        peer = min(peer, bench_peer(args.steps), key=lambda r: r["seconds_per_step"])
        again = bench_train_step("bf16", args.steps)
        if again["seconds_per_step"] < ours["seconds_per_step"]:
            rows[rows.index(ours)] = ours = again
    if peer is not None:
        rows.append(peer)
    print(f"machine: {machine_name()}  torch {torch.__version__}")
    print("matmul rate (2048^3): " + ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in peak.items()))
    _report(rows, peak)
    if peer is not None:
        print(f"harness / diffusers (bf16, batch 32, 64 px): "
              f"params {ours['params'] / 1e6:.2f} M / {peer['params'] / 1e6:.2f} M, "
              f"FLOP per step {ours['tflop_per_step']:.3f} / {peer['tflop_per_step']:.3f} T, "
              f"images/s ratio {ours['images_per_s'] / peer['images_per_s']:.2f}, "
              f"FLOP/s ratio {ours['tflops'] / peer['tflops']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_name(), "matmul_tflops": peak, "results": rows, "peer_images_per_s_ratio": None if peer is None else
                       ours["images_per_s"] / peer["images_per_s"]}, f, indent=2)
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
