"""PNG plots and markdown tables of the claims experiments' scores (harness/experiments/claims.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = (("eval_loss", "held-out v-loss (lower is better)"), ("fid", "FID vs held-out (lower is better)"),
           ("top1", "caption retrieval top-1 (higher is better)"))


def _curves(points: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Points grouped by (arm, seed), each group in compute order."""
    groups = defaultdict(list)
    for p in points:
        groups[(p["arm"], p["seed"])].append(p)
    return {k: sorted(v, key=lambda p: p["tflop"]) for k, v in groups.items()}


def plot_curves(points: list[dict], path: Path, title: str, resolution: int | None = None,
                metrics=METRICS) -> Path:
    """One panel per metric against cumulative training TFLOP: a line per (arm, seed), one colour per
    arm; only points at `resolution` when given (scores at different resolutions do not compare)."""
    points = [p for p in points if resolution is None or p["resolution_px"] == resolution]
    arms = list(dict.fromkeys(p["arm"] for p in points))
    colours = {arm: plt.cm.tab10(i) for i, arm in enumerate(arms)}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), dpi=110)
    for ax, (key, label) in zip(axes, metrics):
        labelled = set()
        for (arm, seed), curve in _curves(points).items():
            shown = [(p["tflop"], p[key]) for p in curve if key in p]
            if not shown:
                continue
            xs, ys = zip(*shown)
            ax.plot(xs, ys, "o-", ms=3, lw=1.2, color=colours[arm], label=None if arm in labelled else arm)
            labelled.add(arm)
        ax.set_xlabel("cumulative training TFLOP")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def table(points: list[dict], keys=("eval_loss", "fid", "top1", "fid_to_core", "top1_at_core_px")) -> str:
    """A markdown table of every scored checkpoint."""
    present = [k for k in keys if any(k in p for p in points)]
    lines = ["| arm | seed | stage | step | px | TFLOP | " + " | ".join(present) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(present)]
    for p in points:
        cells = ["" if k not in p else f"{p[k]:.1f}" if k.startswith("fid") else f"{p[k]:.4f}" for k in present]
        lines.append(f"| {p['arm']} | {p['seed']} | {p['stage']} | {p['step']} | {p['resolution_px']} | "
                     f"{p['tflop']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
