"""Counting FLOPs of a training step and measuring this machine's matrix-multiply rate.

torch's FlopCounterMode has no formula for the CPU flash-attention kernels that
scaled_dot_product_attention dispatches to, and would count attention as 0 FLOPs; the formulas
of the CUDA kernels (same math) are registered for them here.
"""

from __future__ import annotations

import platform
import time

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

_aten = torch.ops.aten


@register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
def _cpu_flash_forward(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


@register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
def _cpu_flash_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def count_flops(fn) -> int:
    """FLOPs (multiply-add = 2) of everything `fn()` runs, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_tflops(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 2.0,
                  device: str | torch.device = "cpu") -> float:
    """Measured dense (n x n) @ (n x n) rate in TFLOP/s under the current matmul precision setting
    (its own generator: the global RNG streams are left as they were)."""
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, dtype=dtype, device=device, generator=g)
    b = torch.randn(n, n, dtype=dtype, device=device, generator=g)
    a @ b
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def machine_name() -> str:
    """What a benchmark ran on: the GPU's name, or the CPU model (/proc/cpuinfo) and thread count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = info.get("flags", "").split()
        isa = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "no avx2")
        model = f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, {isa})"
    except (OSError, KeyError):
        pass
    return f"{model}, {torch.get_num_threads()} threads"
