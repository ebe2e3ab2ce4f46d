"""Where the logged metrics go, on rank 0: the printed step line, run_dir/log.jsonl, TensorBoard events
under run_dir/tensorboard (train.tensorboard) and Weights & Biases (train.wandb_project).

    tensorboard --logdir RUN_DIR
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from harness.config import RunConfig, to_dict

# TensorBoard / W&B sections of the logged fields; any other number goes under "train/".
SECTIONS = {
    "images_per_s": "perf", "step_s": "perf", "tflops": "perf", "tflop_per_step": "perf", "mfu": "perf",
    "data_wait_frac": "perf", "peak_mem_gib": "perf", "rank_step_s_min": "perf", "rank_step_s_max": "perf",
    "rank_step_s_median": "perf", "slowest_rank": "perf", "elapsed_s": "time", "eta_s": "time",
    "save_s": "checkpoint",
}


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def step_line(line: dict, total_steps: int) -> str:
    """The printed line of a logging window."""
    mfu = f"  mfu {line['mfu']:.1%}" if math.isfinite(line.get("mfu", math.nan)) else ""
    return (f"step {line['step']:>6}/{total_steps}  loss {line['loss']:.4f}  lr {line['lr']:.2e}  "
            f"gnorm {line['grad_norm']:.3f}  {line['images_per_s']:.1f} img/s  {line['tflops']:.3g} TFLOP/s{mfu}  "
            f"data {line['data_wait_frac']:.0%}  mem {line['peak_mem_gib']:.2f} GiB  "
            f"elapsed {_duration(line['elapsed_s'])}  eta {_duration(line['eta_s'])}")


def scalars(fields: dict, leave_out: tuple[str, ...] = ()) -> dict[str, float]:
    """The finite numbers as `section/key` (the step and `leave_out` aside)."""
    return {f"{SECTIONS.get(k, 'train')}/{k}": float(v) for k, v in fields.items()
            if k != "step" and k not in leave_out and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class MetricSinks:
    """Rank 0's outputs for logging windows and sample grids (every method is a no-op elsewhere)."""

    def __init__(self, run_dir: Path, cfg: RunConfig, *, start_step: int, enabled: bool):
        self.run_dir, self.train, self.enabled = Path(run_dir), cfg.train, enabled   # train.steps read live (a time budget sets it)
        self.tensorboard = self.wandb = None
        if enabled and cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run logs again the steps after its checkpoint: TensorBoard hides the old ones.
            self.tensorboard = SummaryWriter(self.run_dir / "tensorboard",
                                             purge_step=start_step + 1 if start_step else None)
        if enabled and cfg.train.wandb_project:
            import wandb

            self.wandb = wandb.init(project=cfg.train.wandb_project, dir=self.run_dir, name=self.run_dir.name,
                                    mode=os.environ.get("WANDB_MODE", "offline"), config=to_dict(cfg))

    def window(self, line: dict) -> None:
        """One logging window: printed, appended to log.jsonl, and sent to TensorBoard and W&B."""
        if not self.enabled:
            return
        print(step_line(line, self.train.steps), flush=True)
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        # A checkpoint's save_s reaches log.jsonl with the next line, TensorBoard at its own step (event).
        self._send(line["step"], scalars(line, leave_out=("save_s",)))

    def event(self, step: int, fields: dict) -> None:
        """Numbers of something that happened at `step` (a checkpoint's save_s) for TensorBoard and W&B."""
        if self.enabled:
            self._send(step, scalars(fields))

    def _send(self, step: int, values: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for tag, value in values.items():
                self.tensorboard.add_scalar(tag, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def image(self, tag: str, png: Path, step: int) -> None:
        """A sample grid written at `step`."""
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")
            self.tensorboard.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(str(png))}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tensorboard = self.wandb = None
