"""A real training step on synthetic data, for measurements: benchmarks and FLOP budgets.

Builds the configured stage at the current layout exactly as training does (Megatron schedule, DDP,
distributed optimizer, frozen parameters), with a fixed random batch in place of the reader.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.checkpoint.stage import TrainingStage
from harness.config import RunConfig
from harness.model.conditioning import TextInput
from harness.parallel.layout import Layout, device
from harness.parallel.pipeline import pack_spec
from harness.train.step import MicroBatch, StepRunner


def synthetic_step(cfg: RunConfig, layout: Layout, *, frozen_prefixes: tuple[str, ...] = (),
                   vocab_size: int = 1000) -> tuple[Callable[[], dict], torch.nn.Module]:
    """(step, model): `step()` runs one optimizer step of this rank's share of a random global batch."""
    dev = device()
    stage = TrainingStage.build(cfg, layout, frozen=list(frozen_prefixes), vocab_size=vocab_size)
    model = stage.model
    runner = StepRunner(stage.ddp, stage.optimizer, stage.scheduler, cfg, layout, pack_spec(model, cfg))
    local, res, m = cfg.parallel.global_batch // layout.dp, cfg.model.resolution_px, cfg.parallel.micro_batch
    g = torch.Generator().manual_seed(layout.dp_rank)
    x0 = (torch.rand(local, 3, res, res, generator=g) * 2 - 1).to(dev)
    tokens = torch.randint(3, vocab_size, (local, cfg.model.text_max_len), generator=g)
    text = TextInput(lengths=torch.full((local,), 8, device=dev), tokens=tokens.to(dev))
    first = layout.dp_rank * local
    mbs = [MicroBatch(x0[i:i + m], text.select(slice(i, i + m)), list(range(first + i, first + i + m)))
           for i in range(0, local, m)]
    return (lambda: runner.train_step(mbs, len(mbs))), model

