"""Step logs: each logging window's averages and measurements (harness/train/metrics.py says where
they go), and the loss-curve PNG."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib

from harness.train.measure import StepMeter, straggler
from harness.train.metrics import MetricSinks

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class StepLogger:
    """Averages metrics over a logging window and measures its throughput (every rank: the window's
    measurements are collective); rank 0's `sinks` print and store the line."""

    def __init__(self, sinks: MetricSinks, meter: StepMeter, *, total_steps: int, global_batch: int,
                 time_limit_s: float):
        self.sinks, self.meter = sinks, meter
        self.total_steps, self.global_batch, self.time_limit_s = total_steps, global_batch, time_limit_s
        self.start = self.window_start = time.perf_counter()
        self.window: list[dict] = []
        self.notes: dict = {}

    def begin(self) -> None:
        """The first step is about to run: the first window's rates leave the start-up out."""
        self.window_start = time.perf_counter()

    def note(self, fields: dict) -> None:
        """Fields the next logged line carries (once)."""
        self.notes.update(fields)

    def record(self, step: int, metrics: dict, every: int) -> float | None:
        """Add one step's metrics (with `data_s`, its wait for data); every `every` steps log a line,
        returning its mean loss."""
        self.window.append(metrics)
        if step % every and step != self.total_steps:
            return None
        now = time.perf_counter()
        steps = len(self.window)
        per_step = (now - self.window_start) / steps
        elapsed = now - self.start
        remaining = (self.total_steps - step) * per_step
        if self.time_limit_s:
            remaining = min(remaining, max(self.time_limit_s - elapsed, 0.0))
        finite = [m["loss"] for m in self.window if math.isfinite(m["loss"])]    # skipped steps aside
        measured = self.meter.window(per_step)
        line = {"step": step, "loss": sum(finite) / len(finite) if finite else float("nan"),
                "grad_norm": self.window[-1]["grad_norm"], "lr": self.window[-1]["lr"],
                "images_per_s": self.global_batch / per_step, "elapsed_s": round(elapsed, 2),
                "skipped_steps": self.window[-1].get("skipped_steps", 0), "step_s": per_step,
                "eta_s": round(remaining, 2),
                "data_wait_frac": sum(m["data_s"] for m in self.window) / (now - self.window_start),
                **measured, **self.notes}
        self.window, self.window_start, self.notes = [], now, {}
        self.sinks.window(line)
        slow = straggler(measured)
        if slow:
            self.sinks.message(f"step {step}: {slow}")
        return line["loss"]


def read_log(path: Path) -> list[dict]:
    """The JSONL log lines of a run by step (a resumed run may have logged a step twice: last wins)."""
    path = Path(path)
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return sorted({x["step"]: x for x in lines}.values(), key=lambda x: x["step"])


def plot_loss_curve(log_path: Path, png_path: Path, title: str = "") -> Path:
    """Training loss against step (log scale) from a run's log.jsonl, as a PNG."""
    lines = read_log(log_path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([x["step"] for x in lines], [x["loss"] for x in lines], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("v-prediction MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or Path(log_path).parent.name)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)
