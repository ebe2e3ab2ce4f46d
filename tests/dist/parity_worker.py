"""Three training steps of the tiny model at several layouts in one launch, for tests/dist.

    torchrun --nproc_per_node 4 tests/dist/parity_worker.py --data DIR --out DIR --layouts 2x2,2x1sp,1x2rf [--distributed-optimizer]

For each TPxPP layout (DP = world / (TP*PP)) it builds the model from the same seed, trains three
steps on the same global batches, and writes (with dist_checkpointing, so any layout can be read
back at TP=PP=1) the gradients of the third step and the weights after it, plus the losses.
A layout may carry flags: `sp` sequence parallelism, `rc` recomputation of the core layers, `rf`
full recomputation (core and every ResBlock), `ov` overlapped gradient reduce and parameter gather,
`xp` a network that predicts x (`diffusion.prediction=x`), `bf` bf16.
Also importable: `run_layout` is the reference when called in a one-process world.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from megatron.core import dist_checkpointing

from harness.checkpoint.sharded import model_sharded_state_dict, with_prefix
from harness.checkpoint.stage import TrainingStage
from harness.config import load
from harness.data.reader import ShardedReader
from harness.distributed.launch import init_distributed
from harness.parallel.layout import device, initialize_layout
from harness.parallel.pipeline import pack_spec
from harness.train.loop import microbatches
from harness.train.step import StepRunner

STEPS = 3


FLAGS = {"sp": ["parallel.sequence_parallel=true"], "rc": ["parallel.recompute=core"],
         "rf": ["parallel.recompute=full", "parallel.recompute_min_px=16"],
         "ov": ["parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true", "parallel.bucket_size=20000"],
         "xp": ["diffusion.prediction=x"], "bf": ["train.precision=bf16"]}


def overrides(data: Path, tp: int, pp: int, distributed_optimizer: bool, flags: str = "") -> list[str]:
    extra = [o for i in range(0, len(flags), 2) for o in FLAGS[flags[i:i + 2]]]
    return [f"data.path={data / 'train'}", f"data.heldout_path={data / 'heldout'}", "model.size=tiny",
            "parallel.global_batch=8", "parallel.micro_batch=2", f"parallel.tp={tp}", f"parallel.pp={pp}",
            f"parallel.distributed_optimizer={str(distributed_optimizer).lower()}", "optim.warmup_steps=1",
            "optim.lr=1e-3", "optim.eps=1e-4", "train.matmul_precision=highest", "train.steps=3", *extra]


def run_layout(data: Path, out: Path, tp: int, pp: int, distributed_optimizer: bool, flags: str = "") -> list[float]:
    """Train STEPS steps at (tp, pp); save third-step grads and final weights under `out`."""
    cfg = load(None, overrides(data, tp, pp, distributed_optimizer, flags))
    layout = initialize_layout(tp, pp, cfg.train.seed)
    dev = device()
    stage = TrainingStage.build(cfg, layout)
    model, text = stage.model, stage.text
    runner = StepRunner(stage.ddp, stage.optimizer, stage.scheduler, cfg, layout, pack_spec(model, cfg))
    needs_data = layout.is_first_stage or layout.is_last_stage
    reader = ShardedReader(cfg.data.path, resolution_px=64, global_batch=8, dp_rank=layout.dp_rank, dp=layout.dp,
                           seed=cfg.data.seed) if needs_data else None
    num_micro = 8 // (2 * layout.dp)
    base = model_sharded_state_dict(model)
    params = dict(model.named_parameters())
    losses = []
    for step in range(STEPS):
        mbs = microbatches(reader, text, cfg, layout, dev) if reader is not None else None
        losses.append(runner.accumulate(mbs, num_micro))
        if step == STEPS - 1 and not distributed_optimizer:   # main_grad is fully reduced only without ZeRO
            grads = {k: params[k].main_grad for k in base}
            (out / "grads").mkdir(parents=True, exist_ok=True)
            dist_checkpointing.save(with_prefix(base, "grad.", grads), str(out / "grads"))
        runner.update()
    runner.sync_params()                          # an overlapped gather would finish in the next forward
    (out / "weights").mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(with_prefix(base, "model."), str(out / "weights"))
    if torch.distributed.get_rank() == 0:
        (out / "losses.json").write_text(json.dumps(losses))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layouts", required=True, help="comma-separated TPxPP, e.g. 2x1,1x2")
    parser.add_argument("--distributed-optimizer", action="store_true")
    args = parser.parse_args()
    init_distributed()
    for spec in args.layouts.split(","):
        tp, pp, flags = re.fullmatch(r"(\d+)x(\d+)([a-z]*)", spec).groups()
        tp, pp = int(tp), int(pp)
        dp = torch.distributed.get_world_size() // (tp * pp)
        name = f"tp{tp}_pp{pp}_dp{dp}" + ("_zero" if args.distributed_optimizer else "") + (f"_{flags}" if flags else "")
        run_layout(args.data, args.out / name, tp, pp, args.distributed_optimizer, flags)


if __name__ == "__main__":
    main()
