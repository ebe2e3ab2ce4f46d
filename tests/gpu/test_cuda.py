"""The `gpu` tier: the CUDA path itself (NCCL, bf16 on the GPU, no CPU compatibility layer).

Every test here is skipped with its reason on a machine without CUDA. tools/gpu_check.sh runs this
tier together with tests/unit/test_stage_boundaries.py (exact resume and the bf16 stage-boundary
invariant), which run on whatever device the machine has.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from harness.config import load
from harness.distributed import cpu_compat
from harness.train.synthetic import synthetic_step

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]


def test_a_bf16_step_of_small_runs_on_cuda_without_the_compatibility_layer(world):
    cfg = load(None, ["model.size=small", "model.resolution_px=64", "parallel.micro_batch=16",
                      "parallel.global_batch=32", "train.precision=bf16", "parallel.distributed_optimizer=true"])
    step, model = synthetic_step(cfg, world)
    losses = [step()["loss"] for _ in range(3)]
    assert not cpu_compat.is_applied()
    assert dist.get_backend() == "nccl"
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(math.isfinite(x) for x in losses), losses


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="TP2/PP2 parity on NCCL needs two visible GPUs")
def test_tp2_and_pp2_match_one_gpu_on_nccl(tmp_path):
    """tests/dist/test_parallel.py's parity check, launched with torchrun on two GPUs (NCCL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/dist/test_parallel.py", "-k", "layouts_match"],
                            check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
