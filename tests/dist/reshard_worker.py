"""Checkpoint conversions in one 4-process launch, for tests/dist/test_checkpoints.py.

    torchrun --nproc_per_node 4 tests/dist/reshard_worker.py --source CKPT --out DIR --data DIR --precision bf16

Reshards the source through (TP, PP) = (2,2), (2,1), (1,2), (1,1) (verifying each hop in its
layout), converts it to TP=2 x PP=2 by copying (`relayout`), grows the source at TP=2 x PP=2, trains
two more steps at TP=2 x PP=2 from the source, the last hop and the copy (their logs must agree),
and one step from the last hop at a
negligible learning rate (`held`: the weights it loaded must stay).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch.distributed as dist

from harness.checkpoint import io
from harness.checkpoint.reshard import load_stage, relayout, verify
from harness.config import load
from harness.distributed.launch import init_distributed
from harness.growth.grow import grow
from harness.parallel.layout import initialize_layout
from harness.train.loop import train

HOPS = ((2, 2), (2, 1), (1, 2), (1, 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--negligible", nargs="*", default=[], help="overrides of the `held` run")
    args = parser.parse_args()
    init_distributed()
    source = io.resolve(args.source)
    previous = source
    for tp, pp in HOPS:
        layout = initialize_layout(tp, pp)
        overrides = [f"parallel.tp={tp}", f"parallel.pp={pp}"]
        stage, state = load_stage(previous, layout, overrides)
        result = stage.save(args.out / f"tp{tp}_pp{pp}", state)
        verify(previous, result, layout, overrides)
        previous = result

    data = [f"data.path={args.data / 'train'}", f"data.heldout_path={args.data / 'heldout'}",
            "train.matmul_precision=highest", "parallel.tp=2", "parallel.pp=2", "diffusion.sample_steps=2",
            "train.num_samples=2", "train.log_every_steps=1", f"train.precision={args.precision}",
            "train.continuity_samples=8"]
    grow(source, load("configs/tiny/grow-frozen.yaml", data + [f"train.run_dir={args.out / 'grown'}"]),
         initialize_layout(2, 2))

    if dist.get_rank() == 0:     # the layout-only conversion: files copied, no model (tools/reshard.py's path)
        relayout(source, args.out / "relayout", ["parallel.tp=2", "parallel.pp=2"])
    dist.barrier()

    step = io.read_meta(source)["step"]
    for name, start, extra in (("resume_source", source, [f"train.steps={step + 2}"]),
                               ("resume_resharded", previous, [f"train.steps={step + 2}"]),
                               ("resume_relayout", io.resolve(args.out / "relayout"), [f"train.steps={step + 2}"]),
                               ("held", previous, [f"train.steps={step + 1}", "optim.override_schedule=true",
                                                   *args.negligible])):
        if dist.get_rank() == 0:
            shutil.copytree(start, args.out / name / start.name)
            (args.out / name / io.LATEST).write_text(start.name)
        dist.barrier()
        train(load("configs/tiny/core.yaml", data + [f"train.run_dir={args.out / name}",
                                                     f"optim.decay_steps={step + 2}", *extra]))


if __name__ == "__main__":
    main()
