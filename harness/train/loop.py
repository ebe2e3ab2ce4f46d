"""The training loop of one stage, as a short story of calls.

    harness-train --config configs/demo/core.yaml train.steps=200
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from harness.checkpoint import io
from harness.checkpoint.stage import TrainingStage, bundled_tokenizer
from harness.checkpoint.state import TrainState
from harness.config import RunConfig, validate_world
from harness.data.reader import ShardedReader, rank_positions
from harness.data.text import TextSource
from harness.dist.launch import init_distributed, split_mpi_comm
from harness.eval.grid import save_grid
from harness.eval.sampling import sample_captions
from harness.growth.rules import frozen_for_stage
from harness.model.ema import EMA
from harness.parallel.layout import Layout, device, initialize_layout
from harness.parallel.pipeline import pack_spec
from harness.train.continuity import Continuity
from harness.train.logging import StepLogger, plot_loss_curve
from harness.train.rundir import unwritable_reason
from harness.train.signals import StopSignals, requeue_slurm_job
from harness.train.step import MicroBatch, StepRunner


def prepare_run_dir(run_dir: Path, rank: int) -> None:
    """Create the run directory (rank 0) or fail at once with a one-line reason."""
    if rank == 0 and (reason := unwritable_reason(run_dir)):
        raise SystemExit(f"train.run_dir {run_dir}: not writable ({reason})")


def microbatches(reader: ShardedReader, text: TextSource, cfg: RunConfig, layout: Layout, dev) -> list[MicroBatch]:
    """This rank's slice of the next global batch, split into micro-batches."""
    positions = list(rank_positions(reader.consumed_samples, cfg.parallel.global_batch, layout.dp_rank, layout.dp))
    batch = reader.next_batch()
    x0 = batch.images.to(dev, torch.float32) / 127.5 - 1.0
    captions = text.encode(batch, dev)
    m = cfg.parallel.micro_batch
    return [MicroBatch(x0[i:i + m], captions.select(slice(i, i + m)), positions[i:i + m])
            for i in range(0, len(positions), m)]


def write_samples(path: Path, model, ema: EMA, cfg: RunConfig, text: TextSource, layout: Layout, dev) -> None:
    """A grid of held-out captions: the real images and samples from the EMA weights (all ranks call it)."""
    with ShardedReader(cfg.data.heldout_path, resolution_px=cfg.model.resolution_px, global_batch=1,
                       verify_checksums=False) as heldout:
        idx = np.linspace(0, len(heldout) - 1, cfg.train.num_samples).round().astype(int)
        batch = heldout.read(idx)
    with ema.applied(model):
        images = sample_captions(model, cfg, layout, text.encode(batch, dev), list(range(len(idx))), seed=cfg.train.seed)
    if layout.rank == 0:
        real = batch.images.float() / 127.5 - 1.0
        save_grid(path, [real, images], batch.captions, ["held-out", "sampled"])


def _agree(*flags: bool) -> list[bool]:
    """Each flag true on every rank if it is true on any (stop decisions must be collective)."""
    t = torch.tensor([float(f) for f in flags], device=device())   # NCCL reduces device tensors only
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def train(cfg: RunConfig) -> Path:
    """Run (or resume) one stage; returns the path of its last checkpoint."""
    info = init_distributed(cfg.parallel.timeout_s)
    validate_world(cfg, info.world_size)
    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    layout = initialize_layout(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed, cfg.parallel.timeout_s)
    run_dir = Path(cfg.train.run_dir)
    prepare_run_dir(run_dir, layout.rank)
    dev = device()

    resume = io.latest_checkpoint(run_dir)
    start = resume or (io.resolve(cfg.train.init_from) if cfg.train.init_from else None)
    frozen = frozen_for_stage(cfg.train.stage, io.read_meta(start) if start else None)
    stage = TrainingStage.build(cfg, layout, frozen=frozen, tokenizer=bundled_tokenizer(start))
    model, ema, optimizer, scheduler, text = stage.model, stage.ema, stage.optimizer, stage.scheduler, stage.text
    if resume is not None:
        state = stage.restore(resume)
    elif start is not None:
        state = stage.load_weights(start)      # a new stage from another stage's weights: fresh optimizer
    else:
        state = TrainState()
    if layout.rank == 0:
        where = f"resumed from {resume}" if resume else f"initialised from {start}" if start else "from scratch"
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"stage {cfg.train.stage}: {sum(p.numel() for p in model.parameters()):,} parameters on rank 0, "
              f"{trainable:,} trained ({len(frozen)} tensors frozen), layout tp={layout.tp} "
              f"pp={layout.pp} dp={layout.dp}, {where}", flush=True)

    # First and last pipeline stages read the batch (the last recomputes the v target from it);
    # under MPI, rank 0 of those reads the manifest and broadcasts it.
    needs_data = layout.is_first_stage or layout.is_last_stage
    data_comm = split_mpi_comm(info, needs_data)
    reader = ShardedReader(cfg.data.path, resolution_px=cfg.model.resolution_px, global_batch=cfg.parallel.global_batch,
                           dp_rank=layout.dp_rank, dp=layout.dp, seed=cfg.data.seed,
                           consumed_samples=state.consumed_samples, verify_checksums=cfg.data.verify_checksums,
                           comm=data_comm) if needs_data else None
    runner = StepRunner(stage.ddp, optimizer, scheduler, cfg, layout, pack_spec(model, cfg))
    num_micro = cfg.parallel.global_batch // (cfg.parallel.micro_batch * layout.dp)
    next_microbatches = lambda: microbatches(reader, text, cfg, layout, dev) if reader is not None else None  # noqa: E731
    logger = StepLogger(run_dir, total_steps=cfg.train.steps, global_batch=cfg.parallel.global_batch,
                        time_limit_s=cfg.train.time_limit_minutes * 60, enabled=layout.rank == 0)
    continuity = Continuity(start, state.loss if resume else io.read_meta(start).get("loss"),
                            rank=layout.rank) if start is not None else None
    if continuity and cfg.train.continuity_samples:
        logger.note(continuity.score(lambda: runner.evaluate(next_microbatches(), num_micro),
                                     cfg.train.continuity_samples, cfg.parallel.global_batch))
        if reader is not None:
            reader.consumed_samples = state.consumed_samples     # the scored batches are trained on next
    save = lambda: stage.save(run_dir, state)  # noqa: E731
    start = time.perf_counter()
    t = cfg.train
    signals = StopSignals()

    while state.step < t.steps:
        metrics = runner.train_step(next_microbatches(), num_micro)
        ema.update(model, state.step)
        state.step += 1
        state.consumed_samples += cfg.parallel.global_batch
        logged = logger.record(state.step, metrics, t.log_every_steps)
        if logged is not None:
            state.loss = logged
            if continuity:
                continuity.first_logged(logged, state.step)
        if t.sample_every_steps and state.step % t.sample_every_steps == 0 and state.step < t.steps:
            write_samples(run_dir / f"samples_step{state.step:07d}.png", model, ema, cfg, text, layout, dev)
        out_of_time, usr1, term = _agree(
            bool(t.time_limit_minutes) and time.perf_counter() - start > t.time_limit_minutes * 60,
            signals.received == "SIGUSR1", signals.received == "SIGTERM")
        if state.step % t.ckpt_every_steps == 0 or out_of_time or usr1 or term:
            last = save()
        if usr1 or term:
            signals.restore()
            if layout.rank == 0:
                requeue = usr1 and t.requeue
                # Printed before the requeue: `scontrol requeue` ends this job step at once.
                print(f"{'SIGTERM' if term else 'SIGUSR1'} at step {state.step}: checkpoint {last} written, "
                      f"{'requeueing' if requeue else 'not requeued'}", flush=True)
                if requeue:
                    print(requeue_slurm_job(), flush=True)
            return last
        if out_of_time:
            if layout.rank == 0:
                print(f"time limit of {t.time_limit_minutes} min reached at step {state.step}", flush=True)
            break

    signals.restore()
    last = save()
    write_samples(run_dir / "samples.png", model, ema, cfg, text, layout, dev)
    if layout.rank == 0:
        plot_loss_curve(run_dir / "log.jsonl", run_dir / "loss.png", f"{t.stage} ({cfg.model.size}, {cfg.model.resolution_px}px)")
        print(f"done: {last}", flush=True)
    return last
