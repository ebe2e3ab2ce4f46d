"""The profiler window (train.profile_steps `A:B` on train.profile_ranks): torch.profiler over steps A
to B-1, written to run_dir/profile/ as a TensorBoard-plugin trace and a Chrome trace
(trace_rank{r}.json), on CUDA with a memory snapshot (memory_rank{r}.pickle, for
https://pytorch.org/memory_viz; the harness only writes it), and the top operators printed."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

from harness.config import RunConfig, profile_window


class ProfileWindow:
    """Starts the profiler before step A and stops it after step B-1 (or at `close`)."""

    def __init__(self, cfg: RunConfig, rank: int, run_dir: Path):
        window = profile_window(cfg.train.profile_steps)
        self.window = window if window and rank in cfg.train.profile_ranks else None
        self.rank, self.dir = rank, Path(run_dir) / "profile"
        self.cuda = torch.cuda.is_available()
        self.profiler: profile | None = None
        self.profiled: list[int] = []

    def before(self, step: int) -> None:
        """Step `step` (numbered from 1) is about to run."""
        if self.window is None or self.profiler is not None or not self.window[0] <= step < self.window[1]:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities, record_shapes=True, profile_memory=True, with_stack=False,
                                on_trace_ready=tensorboard_trace_handler(str(self.dir), worker_name=f"rank{self.rank}"))
        if self.cuda:
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        self.profiler.start()

    def after(self, step: int) -> None:
        """Step `step` is done: the window's last step stops the profiler and writes its files."""
        if self.profiler is None:
            return
        self.profiled.append(step)
        if step >= self.window[1] - 1:
            self.close()

    def close(self) -> None:
        """Stop a running profile (the window's end, or a run that stops inside it) and write it."""
        if self.profiler is None:
            return
        prof, self.profiler, self.window = self.profiler, None, None
        prof.stop()                                   # the TensorBoard trace handler writes here
        # A trace is saved once: the Chrome trace is a copy of the one the handler just wrote.
        written = max(self.dir.glob(f"rank{self.rank}.*.pt.trace.json"), key=lambda f: f.stat().st_mtime_ns)
        shutil.copyfile(written, self.dir / f"trace_rank{self.rank}.json")
        if self.cuda:
            torch.cuda.memory._dump_snapshot(str(self.dir / f"memory_rank{self.rank}.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
        steps = f"{self.profiled[0]}-{self.profiled[-1]}" if self.profiled else "none"
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        print(f"rank {self.rank}: profile of steps {steps} written to {self.dir}\n"
              f"{prof.key_averages().table(sort_by=sort, row_limit=15)}", flush=True)
