"""What a logging window measures beyond the loss: FLOPs against the device's peak, memory, the time
spent waiting for data and each rank's compute time (stragglers).

FLOPs are counted once, before the first step, by torch's FlopCounterMode over a forward and backward
of its first micro-batch on each rank (recomputation included), times the micro-batches of a step,
averaged over the ranks. That pass runs apart from training (a pass under the counter is not always
bit-identical to one without it): the RNG streams are restored and the gradients cleared, and a
run's losses and weights are those of a run that never counted (tests/unit/test_metrics.py).
"""

from __future__ import annotations

import functools
import resource
import statistics
import sys
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from harness.config import RunConfig
from harness.eval.flops import matmul_tflops
from harness.parallel.layout import Layout, precision

if TYPE_CHECKING:
    from harness.train.step import StepRunner

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
STRAGGLER_RATIO = 1.2     # a rank this much slower than the median is named


class ComputeTimer:
    """Each step's compute on this rank, from its start to its gradient reduction: the time spent
    waiting there for slower peers is left out. On CUDA it reads events on the stream (the device's
    time, not the host's kernel launches) when the window ends."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.spans: list[tuple] = []
        self._start = None

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        if self._start is not None:
            self.spans.append((self._start, self._now()))
            self._start = None

    def take(self) -> float:
        """Mean seconds per step since the last call (nan when no step finished)."""
        spans, self.spans = self.spans, []
        if not spans:
            return float("nan")
        if self.cuda:
            spans[-1][1].synchronize()
            return sum(a.elapsed_time(b) for a, b in spans) / 1000 / len(spans)
        return sum(b - a for a, b in spans) / len(spans)


def peak_memory_gib(dev: torch.device) -> float:
    """This process's peak memory so far: allocated CUDA memory on a GPU, else the resident set's
    high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


@functools.lru_cache(maxsize=None)
def _machine_rate(dtype: torch.dtype, dev: str, matmul_precision: str) -> float:
    """The matmul rate MFU is stated against, measured once per process, precision and matmul
    setting (every stage a process trains, e.g. in tests or tools/claims.py, shares it)."""
    on_cuda = dev.startswith("cuda")
    return matmul_tflops(dtype, n=8192 if on_cuda else 1024, seconds=0.5, device=dev)


class StepMeter:
    """FLOPs per step, the peak rate they are stated against, and each window's per-rank times."""

    def __init__(self, cfg: RunConfig, layout: Layout, dev: torch.device, runner: StepRunner):
        self.layout, self.dev, self.runner = layout, dev, runner
        self.flops_per_step: float | None = None        # mean over ranks, once counted
        self.peak_tflops = cfg.train.peak_tflops
        if not self.peak_tflops and layout.rank == 0:   # only rank 0 reports MFU
            self.peak_tflops = _machine_rate(PRECISIONS[precision(cfg)], str(dev), torch.get_float32_matmul_precision())

    def count(self, microbatches: list | None, num_micro: int) -> None:
        """Count the FLOPs per step once, on the first step's batches (collective)."""
        if self.flops_per_step is None:
            local = self.runner.count_microbatch_flops(microbatches) * num_micro
            self.flops_per_step = sum(self._gather(float(local))) / self.layout.world

    def _gather(self, value: float) -> list[float]:
        local = torch.tensor([value], dtype=torch.float64, device=self.dev)
        gathered = [torch.empty_like(local) for _ in range(self.layout.world)]
        dist.all_gather(gathered, local)
        return [t.item() for t in gathered]

    def window(self, seconds_per_step: float) -> dict:
        """The window's throughput and memory fields, and the min and max over ranks of the mean
        compute time per step (an all-gather of one float per rank: every rank calls this)."""
        times = self._gather(self.runner.timer.take())
        flops = self.flops_per_step or 0.0
        tflops = flops / seconds_per_step / 1e12
        fields = {"tflop_per_step": flops / 1e12, "tflops": tflops,
                  "mfu": tflops / self.peak_tflops if self.peak_tflops else float("nan"),
                  "peak_mem_gib": peak_memory_gib(self.dev),
                  "rank_step_s_min": min(times), "rank_step_s_max": max(times),
                  "slowest_rank": max(range(len(times)), key=times.__getitem__)}
        return {**fields, "rank_step_s_median": statistics.median(times)}


def straggler(fields: dict) -> str | None:
    """A line naming the slowest rank of a window when it is over STRAGGLER_RATIO x the median."""
    slowest, median = fields["rank_step_s_max"], fields["rank_step_s_median"]
    if not slowest > STRAGGLER_RATIO * median:
        return None
    return (f"straggler: rank {fields['slowest_rank']} computed {slowest:.3f} s per step, "
            f"{100 * (slowest / median - 1):.0f}% over the median {median:.3f} s "
            f"(fastest rank {fields['rank_step_s_min']:.3f} s)")
