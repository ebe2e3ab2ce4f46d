"""Step logs (console line + JSONL) with images/s and ETA, and the loss-curve PNG."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepLogger:
    """Averages metrics over a logging window; rank 0 prints and appends to run_dir/log.jsonl."""

    def __init__(self, run_dir: Path, *, total_steps: int, global_batch: int, time_limit_s: float, enabled: bool):
        self.path = Path(run_dir) / "log.jsonl"
        self.total_steps, self.global_batch, self.time_limit_s = total_steps, global_batch, time_limit_s
        self.enabled = enabled
        self.start = self.window_start = time.perf_counter()
        self.window: list[dict] = []
        self.notes: dict = {}

    def note(self, fields: dict) -> None:
        """Fields the next logged line carries (once)."""
        self.notes.update(fields)

    def record(self, step: int, metrics: dict, every: int) -> float | None:
        """Add one step's metrics; print and write a line every `every` steps, returning its mean loss."""
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
        line = {"step": step, "loss": sum(finite) / len(finite) if finite else float("nan"),
                "grad_norm": self.window[-1]["grad_norm"], "lr": self.window[-1]["lr"],
                "images_per_s": self.global_batch / per_step, "elapsed_s": round(elapsed, 2),
                "skipped_steps": self.window[-1].get("skipped_steps", 0), **self.notes}
        self.window, self.window_start, self.notes = [], now, {}
        if not self.enabled:
            return line["loss"]
        print(f"step {step:>6}/{self.total_steps}  loss {line['loss']:.4f}  lr {line['lr']:.2e}  "
              f"gnorm {line['grad_norm']:.3f}  {line['images_per_s']:.1f} img/s  "
              f"elapsed {_duration(elapsed)}  eta {_duration(remaining)}", flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
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
