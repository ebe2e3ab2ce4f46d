"""The CPU compatibility layer: what it redirects, and that a CUDA build never gets it."""

import sys

import torch

from harness.distributed import cpu_compat


def test_megatron_sees_the_cpu_as_its_device(world):
    assert cpu_compat.is_applied()
    mappings = sys.modules["megatron.core.tensor_parallel.mappings"]
    assert mappings.torch.cuda.current_device() == torch.device("cpu")
    assert mappings.torch.zeros(2, device="cuda").device.type == "cpu"
    assert mappings.torch.empty(3, device=0).device.type == "cpu"
    # code outside Megatron keeps the real torch
    import harness.model.core as core
    assert core.torch is torch
    assert torch.zeros(1).type() == "torch.FloatTensor"


def test_rng_tracker_forks_the_cpu_generator(world):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        a = torch.rand(3)
    with get_cuda_rng_tracker().fork():
        b = torch.rand(3)
    assert not torch.equal(a, b)                         # the tracked state advanced inside the fork
    assert torch.equal(torch.get_rng_state(), before)    # and the default state was restored


def test_never_applied_on_a_cuda_build(monkeypatch):
    """On a machine with CUDA, apply() leaves Megatron and torch alone."""
    monkeypatch.setattr(cpu_compat, "_applied", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    original_type = torch.Tensor.type
    assert cpu_compat.apply() is False
    assert not cpu_compat.is_applied()
    assert torch.Tensor.type is original_type
