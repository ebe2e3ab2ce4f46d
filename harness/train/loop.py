"""The training loop of one stage: `build` puts a run together, `run` trains it, `train` does both.

    harness-train --config configs/demo/core.yaml train.steps=200
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

from harness.checkpoint import io
from harness.checkpoint.rundir import RunLock
from harness.checkpoint.stage import TrainingStage, bundled_tokenizer
from harness.checkpoint.state import TrainState
from harness.config import RunConfig, validate_world
from harness.data.reader import ShardedReader, rank_positions, to_model_range
from harness.data.text import TextSource
from harness.distributed.failures import mark_progress
from harness.distributed.launch import init_distributed, split_mpi_comm
from harness.eval.grid import save_grid
from harness.eval.sampling import sample_captions
from harness.growth.rules import frozen_for_stage
from harness.model.ema import EMA
from harness.parallel.layout import Layout, device, initialize_layout
from harness.parallel.pipeline import pack_spec
from harness.train.budget import Plan, TimeBudget
from harness.train.continuity import Continuity
from harness.train.logging import StepLogger, plot_loss_curve
from harness.train.measure import StepMeter
from harness.train.metrics import MetricSinks
from harness.train.profiling import ProfileWindow
from harness.train.signals import StopSignals, requeue_slurm_job
from harness.train.start import hold_run_dir, load_start, start_candidate
from harness.train.step import MicroBatch, StepRunner
from harness.train.stopping import Decision, Stop, agree, complete, decide


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite steps in a row, a lost run-directory lock); names the step."""


def microbatches(reader: ShardedReader, text: TextSource, cfg: RunConfig, layout: Layout, dev) -> list[MicroBatch]:
    """This rank's slice of the next global batch, split into micro-batches."""
    positions = list(rank_positions(reader.consumed_samples, cfg.parallel.global_batch, layout.dp_rank, layout.dp))
    batch = reader.next_batch()
    x0 = to_model_range(batch.images, dev)
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
        real = to_model_range(batch.images)
        save_grid(path, [real, images], batch.captions, ["held-out", "sampled"])


@dataclass
class Outcome:
    """How a stage run ended."""

    stop: Stop
    complete: bool                 # the stage is done (a chain's next stage may start from it)
    checkpoint: Path | None        # its last checkpoint
    step: int


@dataclass
class Run:
    """Everything one stage run holds, put together by `build`."""

    cfg: RunConfig
    layout: Layout
    run_dir: Path
    lock: RunLock | None
    signals: StopSignals
    stage: TrainingStage
    state: TrainState
    reader: ShardedReader | None
    runner: StepRunner
    logger: StepLogger
    profiler: ProfileWindow
    continuity: Continuity | None
    protect: tuple[Path, ...] = ()
    checkpoint: Path | None = None
    skipped_in_a_row: int = field(default=0)
    background: AsyncCallsQueue | None = None   # train.async_save: the saves being written
    ema_due: int | None = None                  # the EMA update not yet applied (its update count)

    def next_microbatches(self) -> list[MicroBatch] | None:
        if self.reader is None:        # middle pipeline stages receive activations, not data
            return None
        return microbatches(self.reader, self.stage.text, self.cfg, self.layout, device())

    @property
    def num_micro(self) -> int:
        p = self.cfg.parallel
        return p.global_batch // (p.micro_batch * self.layout.dp)

    def catch_up_ema(self) -> None:
        """Fold the last update's weights into the EMA (deferred while parallel.overlap_param_gather
        leaves their all-gather to the next forward)."""
        if self.ema_due is not None:
            self.stage.ema.update(self.stage.model, self.ema_due)
            self.ema_due = None

    def weights_ready(self) -> None:
        """Complete the weights (any pending all-gather) and the EMA before they are read."""
        self.runner.sync_params()
        self.catch_up_ema()

    def save(self, stop: Stop) -> Path:
        """Checkpoint this step (in the background with train.async_save); the training stall is logged."""
        began = time.perf_counter()
        self.weights_ready()
        self.finish_saves(blocking=True)                # one save in flight at a time keeps them ordered
        self.state.complete = complete(stop, self.cfg.train)
        self.checkpoint = self.stage.save(self.run_dir, self.state, self.protect, self.background)
        saved = {"save_s": round(time.perf_counter() - began, 3)}
        self.logger.note(saved)
        self.logger.sinks.event(self.state.step, saved)
        return self.checkpoint

    def finish_saves(self, blocking: bool) -> None:
        """Finalise the background saves that are done (all of them, waiting, if `blocking`): only
        then are they renamed and `latest` moved (collective)."""
        if self.background is not None:
            self.background.maybe_finalize_async_calls(blocking=blocking)

    def samples(self, name: str) -> None:
        if not self.cfg.train.num_samples:
            return
        self.weights_ready()
        s = self.stage
        write_samples(self.run_dir / name, s.model, s.ema, self.cfg, s.text, self.layout, device())
        self.logger.sinks.image("samples", self.run_dir / name, self.state.step)

    def close(self) -> None:
        """End a profile still running and close the metric outputs."""
        self.profiler.close()
        self.logger.sinks.close()


def build(cfg: RunConfig, signals: StopSignals) -> Run:
    """Launch, lock the run directory, assemble the stage and load where it starts."""
    info = init_distributed(cfg.parallel.timeout_s)
    validate_world(cfg, info.world_size)
    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    layout = initialize_layout(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed, cfg.parallel.timeout_s)
    run_dir = Path(cfg.train.run_dir)
    lock = hold_run_dir(run_dir, layout.rank)
    try:
        return _assemble(cfg, info, layout, run_dir, lock, signals)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _assemble(cfg, info, layout, run_dir, lock, signals) -> Run:
    begin = start_candidate(run_dir, cfg.train.init_from)
    frozen = frozen_for_stage(cfg.train.stage, io.read_meta(begin) if begin else None)
    stage = TrainingStage.build(cfg, layout, frozen=frozen, tokenizer=bundled_tokenizer(begin))
    start = load_start(stage, run_dir, cfg.train.init_from)
    state = start.state
    if layout.rank == 0:
        where = (f"resumed from {start.checkpoint}" if start.resumed else
                 f"initialised from {start.checkpoint}" if start.checkpoint else "from scratch")
        trainable = sum(p.numel() for p in stage.model.parameters() if p.requires_grad)
        print(f"stage {cfg.train.stage}: {sum(p.numel() for p in stage.model.parameters()):,} parameters on rank 0, "
              f"{trainable:,} trained ({len(frozen)} tensors frozen), layout tp={layout.tp} pp={layout.pp} "
              f"dp={layout.dp}, {where}", flush=True)
    # First and last pipeline stages read the batch (the last recomputes the v target from it);
    # under MPI, rank 0 of those reads the manifest and broadcasts it.
    needs_data = layout.is_first_stage or layout.is_last_stage
    data_comm = split_mpi_comm(info, needs_data)
    d = cfg.data
    reader = ShardedReader(d.path, resolution_px=cfg.model.resolution_px, global_batch=cfg.parallel.global_batch,
                           dp_rank=layout.dp_rank, dp=layout.dp, seed=d.seed, consumed_samples=state.consumed_samples,
                           verify_checksums=d.verify_checksums, comm=data_comm, timeout_s=cfg.parallel.timeout_s,
                           on_corrupt=d.on_corrupt, max_corrupt=d.max_corrupt) if needs_data else None
    runner = StepRunner(stage.ddp, stage.optimizer, stage.scheduler, cfg, layout, pack_spec(stage.model, cfg))
    sinks = MetricSinks(run_dir, cfg, start_step=state.step, enabled=layout.rank == 0)
    logger = StepLogger(sinks, StepMeter(cfg, layout, device(), runner), total_steps=cfg.train.steps,
                        global_batch=cfg.parallel.global_batch, time_limit_s=cfg.train.time_limit_minutes * 60)
    continuity = None
    if start.checkpoint is not None:
        source_loss = state.loss if start.resumed else io.read_meta(start.checkpoint).get("loss")
        continuity = Continuity(start.checkpoint, source_loss, rank=layout.rank)
    run = Run(cfg, layout, run_dir, lock, signals, stage, state, reader, runner, logger,
              ProfileWindow(cfg, layout.rank, run_dir), continuity, start.protect,
              start.checkpoint if start.resumed else None,
              background=AsyncCallsQueue() if cfg.train.async_save else None)
    if continuity and cfg.train.continuity_samples:
        logger.note(continuity.score(lambda: runner.evaluate(run.next_microbatches(), run.num_micro),
                                     cfg.train.continuity_samples, cfg.parallel.global_batch))
        if reader is not None:
            reader.consumed_samples = state.consumed_samples     # the scored batches are trained on next
    return run


def run(r: Run) -> Outcome:
    """Train until a stop; every stop leaves a checkpoint of the step it stopped at."""
    t, state = r.cfg.train, r.state
    if state.step >= t.steps or (state.complete and t.time_limit_completes):
        return _finish(r, Stop.FINISHED)     # a rerun of a finished stage (or of one whose budget was its time)
    began = time.perf_counter()
    budget = TimeBudget.for_stage(r.cfg, began)
    mark_progress(state.step)
    overlapped = r.cfg.parallel.overlap_param_gather
    r.logger.begin()
    while True:
        # With an overlapped parameter gather the last update's weights are complete only once the
        # next forward has gathered them: the EMA folds them in there (before this update).
        r.profiler.before(state.step + 1)
        fetch = time.perf_counter()
        batches = r.next_microbatches()
        data_s = time.perf_counter() - fetch
        r.logger.meter.count(batches, r.num_micro)
        metrics = r.runner.train_step(batches, r.num_micro, before_update=r.catch_up_ema)
        _count_skips(r, metrics["skipped"])
        if not metrics["skipped"]:
            r.ema_due = state.step
            if not overlapped:
                r.catch_up_ema()
        r.finish_saves(blocking=False)
        state.step += 1
        state.consumed_samples += r.cfg.parallel.global_batch
        mark_progress(state.step)
        r.profiler.after(state.step)
        logged = r.logger.record(state.step, {**metrics, "data_s": data_s, "skipped_steps": state.skipped_steps},
                                 t.log_every_steps)
        if logged is not None and math.isfinite(logged):
            state.loss = logged
            if r.continuity:
                r.continuity.first_logged(logged, state.step)
        if budget is not None:
            _follow(r, budget.plan(state.step, t.steps, r.stage.scheduler.lr_decay_steps))
        if r.lock is not None and r.lock.lost:
            raise TrainingError(f"step {state.step}: the run directory's lock was lost ({r.lock.lost}); stopping "
                                "without a checkpoint so that two jobs do not write one run")
        decision = decide(state.step, t, *agree(bool(t.time_limit_minutes) and
                                                time.perf_counter() - began > t.time_limit_minutes * 60,
                                                r.signals.received))
        if decision.checkpoint:
            r.save(decision.stop)
            if decision.stop is Stop.NONE:         # a signal during the save: the checkpoint is current
                _, signal = agree(False, r.signals.received)
                decision = Decision(Stop(signal), False) if signal else decision
        if decision.stop is not Stop.NONE:
            return _finish(r, decision.stop)
        if t.sample_every_steps and state.step % t.sample_every_steps == 0:
            r.samples(f"samples_step{state.step:07d}.png")


def _follow(r: Run, plan: Plan | None) -> None:
    """End the stage, and its learning-rate decay, where its time budget runs out."""
    if plan is None:
        return
    if r.layout.rank == 0:
        print(plan.describe(r.cfg.train.steps, r.cfg.train.time_limit_minutes), flush=True)
    r.cfg.train.steps = r.logger.total_steps = plan.steps
    r.stage.scheduler.lr_warmup_steps = plan.warmup_steps
    r.stage.scheduler.lr_decay_steps = plan.decay_steps
    r.logger.sinks.event(r.state.step, {"planned_steps": plan.steps, "planned_decay_steps": plan.decay_steps,
                                        "planned_step_s": plan.step_s})


def _count_skips(r: Run, skipped: bool) -> None:
    """Count a skipped step; too many in a row end the run (naming the step) before anything is saved."""
    state = r.state
    r.skipped_in_a_row = r.skipped_in_a_row + 1 if skipped else 0
    if skipped:
        state.skipped_steps += 1
        if r.layout.rank == 0:
            print(f"warning: step {state.step + 1}: non-finite loss or gradients, update skipped "
                  f"({r.skipped_in_a_row} in a row, {state.skipped_steps} in all)", flush=True)
    if r.skipped_in_a_row >= r.cfg.optim.max_skipped_steps:
        raise TrainingError(f"step {state.step + 1}: {r.skipped_in_a_row} steps in a row had a non-finite loss or "
                            f"gradients (optim.max_skipped_steps); the last good checkpoint is {r.checkpoint}")


def _finish(r: Run, stop: Stop) -> Outcome:
    """Report the stop; a finished stage (or one out of time) also writes samples and the loss plot."""
    t, rank0 = r.cfg.train, r.layout.rank == 0
    r.finish_saves(blocking=True)                       # a stop, a signal or the end waits for its save
    done = complete(stop, t)
    if stop in (Stop.SIGUSR1, Stop.SIGTERM):
        if rank0:
            requeue = stop is Stop.SIGUSR1 and t.requeue
            # Printed before the requeue: `scontrol requeue` ends this job step at once.
            print(f"{stop.value} at step {r.state.step}: checkpoint {r.checkpoint} written, "
                  f"{'requeueing' if requeue else 'not requeued'}", flush=True)
            if requeue:
                print(requeue_slurm_job(), flush=True)
        return Outcome(stop, done, r.checkpoint, r.state.step)
    if stop is Stop.TIME_LIMIT and rank0:
        print(f"time limit of {t.time_limit_minutes} min reached at step {r.state.step}"
              + ("" if done else " (stopped, not finished: train.time_limit_completes is false)"), flush=True)
    r.samples("samples.png")
    if rank0:
        plot_loss_curve(r.run_dir / "log.jsonl", r.run_dir / "loss.png",
                        f"{t.stage} ({r.cfg.model.size}, {r.cfg.model.resolution_px}px)")
        print(f"{'done' if done else 'stopped'}: {r.checkpoint}", flush=True)
    return Outcome(stop, done, r.checkpoint, r.state.step)


def train(cfg: RunConfig) -> Outcome:
    """Run (or resume) one stage. Stop signals are handled from before the first step until every
    save is over, and the run directory stays locked until the end."""
    signals = StopSignals()
    try:
        r = build(cfg, signals)
        try:
            return run(r)
        finally:
            r.close()
            if r.lock is not None:
                r.lock.release()
    finally:
        signals.restore()
