"""train.compile: the compiled step trains like the eager one (fp32 and bf16 with the distributed
optimizer, on a grown model whose ResBlocks work at three sizes), with the same parameter names."""

import pytest
import torch

from harness.config import load
from harness.train.synthetic import synthetic_step

# Relative loss difference allowed per precision: inductor fuses in fp32 and rounds once, eager
# rounds after every op (bf16 rounding, 2^-8, accumulates over 3 steps).
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}


def _losses(world, precision: str, compiled: bool) -> tuple[list[float], list[str]]:
    cfg = load(None, ["model.size=tiny", "model.arch=grown", "train.stage=grow-finetune", "model.resolution_px=64", "model.core_grid=16",
                      "parallel.global_batch=4", "parallel.micro_batch=2", "parallel.distributed_optimizer=true",
                      f"train.precision={precision}", "train.matmul_precision=highest", "optim.warmup_steps=1",
                      f"train.compile={compiled}"])
    step, model = synthetic_step(cfg, world)
    return [step()["loss"] for _ in range(3)], [name for name, _ in model.named_parameters()]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_step_matches_eager(world, precision):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, eager_names = _losses(world, precision, compiled=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    compiled, names = _losses(world, precision, compiled=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "train.compile compiled nothing"
    assert names == eager_names
    for a, b in zip(eager, compiled):
        assert abs(a - b) <= TOLERANCE[precision] * abs(a), (precision, eager, compiled)
