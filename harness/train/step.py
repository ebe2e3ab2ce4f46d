"""One optimizer step through Megatron's schedule, the same code for every (TP, PP, DP) layout.

Megatron's `get_forward_backward_func()` runs the micro-batches (1F1B across pipeline stages, or
plain gradient accumulation with PP=1), calls `forward_step` for each, back-propagates, and the
DDP hooks reduce gradients over data-parallel ranks. The first stage embeds; middle stages run
core layers on the packed state they receive; the last stage decodes and computes the v loss.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    get_cuda_rng_tracker,
    scatter_to_sequence_parallel_region,
)

from harness.config import RunConfig
from harness.diffusion.objective import diffuse, draw, v_loss, v_of, v_target
from harness.diffusion.schedule import Schedule
from harness.eval.flops import count_flops
from harness.model.conditioning import TextInput
from harness.parallel.layout import Layout
from harness.parallel.pipeline import PackSpec, pack, unpack
from harness.train.measure import ComputeTimer


@dataclass
class MicroBatch:
    """Inputs of one micro-batch on one data-parallel rank."""

    x0: torch.Tensor          # (B, 3, R, R) images in [-1, 1]
    text: TextInput | None    # captions (first stage only)
    positions: list[int]      # stream positions: they seed each sample's noise, time and caption drop


def _loss_func(target: torch.Tensor, v_of_output: Callable[[torch.Tensor], torch.Tensor], out: torch.Tensor):
    loss = v_loss(v_of_output(out), target).mean()
    # Megatron divides the returned loss by the number of micro-batches in place: report a copy.
    return loss, {"loss": loss.detach().clone()}


class StepRunner:
    """Runs forward/backward over a step's micro-batches and the optimizer update."""

    def __init__(self, ddp, optimizer, scheduler, cfg: RunConfig, layout: Layout, spec: PackSpec):
        self.ddp, self.optimizer, self.scheduler = ddp, optimizer, scheduler
        self.cfg, self.layout, self.spec = cfg, layout, spec
        self.schedule = Schedule.of(cfg.model.resolution_px, cfg.diffusion)
        self.forward_backward = get_forward_backward_func()
        # The schedule calls this after the last micro-batch's backward: the data-parallel gradient
        # reduction. Each step's compute is timed up to it (the wait there for peers left out).
        self.timer = ComputeTimer(self.device.type == "cuda")
        ddp.module.config.finalize_model_grads_func = self._reduce_grads

    def _reduce_grads(self, *args, **kwargs):
        self.timer.stop()
        return finalize_model_grads(*args, **kwargs)

    def forward_step(self, data_iterator, model):
        """Megatron's forward_step_func: this stage's part of the model on the next micro-batch."""
        stage = model.module
        mb = next(data_iterator) if data_iterator is not None else None
        if mb is not None:
            d = draw(mb.positions, tuple(mb.x0.shape[1:]), self.cfg.train.seed, self.cfg.diffusion.caption_drop_prob)
            device = mb.x0.device
            t, noise, logsnr = d.t.to(device), d.noise.to(device), self.schedule.logsnr(d.t).to(device)
        sp = stage.config.sequence_parallel
        if self.layout.is_first_stage:
            z = diffuse(mb.x0, noise, logsnr)
            state = stage.embed(z, t, dataclasses.replace(mb.text, drop=d.drop.to(device)))
        else:
            # With sequence parallelism each TP rank received rows / tp of the packed state.
            received = stage.input_tensor
            state = unpack(gather_from_sequence_parallel_region(received, tensor_parallel_output_grad=False)
                           if sp else received, self.spec)
        state = stage.run_layers(state)
        if not self.layout.is_last_stage:
            packed = pack(state, self.spec)
            return (scatter_to_sequence_parallel_region(packed) if sp else packed), None
        return stage.finish(state), functools.partial(_loss_func, *self._v_target_and_map(mb.x0, noise, logsnr))

    def _v_target_and_map(self, x0, noise, logsnr):
        """The v target and the map from the network's output to v (`diffusion.prediction`); for an x
        prediction both go through the same sigma floor, so the floor only caps the loss's weight."""
        prediction = self.cfg.diffusion.prediction
        if prediction == "v":
            return v_target(x0, noise, logsnr), lambda out: out
        z = diffuse(x0, noise, logsnr)
        to_v = functools.partial(v_of, z=z, logsnr=logsnr, prediction=prediction,
                                 sigma_floor=self.cfg.diffusion.x_sigma_floor)
        return to_v(x0), to_v

    def accumulate(self, microbatches: list[MicroBatch] | None, num_microbatches: int) -> float:
        """Forward and backward over this rank's micro-batches; gradients end up data-parallel reduced
        in each parameter's `main_grad`. Returns the global batch's mean loss (on every rank)."""
        self.timer.start()
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        losses = self.forward_backward(
            forward_step_func=self.forward_step,
            data_iterator=iter(microbatches) if microbatches is not None else None,
            model=[self.ddp], num_microbatches=num_microbatches, seq_length=self.spec.rows(),
            micro_batch_size=self.cfg.parallel.micro_batch, forward_only=False)
        return self._global_mean_loss(losses)

    def count_microbatch_flops(self, microbatches: list[MicroBatch] | None) -> int:
        """This rank's FLOPs of a forward and backward over the first micro-batch (torch's
        FlopCounterMode), run apart from training: the RNG streams are restored and the gradients
        cleared afterwards, so that the steps and their losses are those of a run that never counted.
        Collective (the schedule's communication and gradient reduction)."""
        tracker = get_cuda_rng_tracker()
        states = tracker.get_states()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            flops = count_flops(lambda: self.forward_backward(
                forward_step_func=self.forward_step,
                data_iterator=iter(microbatches[:1]) if microbatches is not None else None,
                model=[self.ddp], num_microbatches=1, seq_length=self.spec.rows(),
                micro_batch_size=self.cfg.parallel.micro_batch, forward_only=False))
        tracker.set_states(states)
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        return flops

    @torch.no_grad()
    def evaluate(self, microbatches: list[MicroBatch] | None, num_microbatches: int) -> float:
        """The global batch's mean loss, forward only (no gradients, no update); collective."""
        losses = self.forward_backward(
            forward_step_func=self.forward_step,
            data_iterator=iter(microbatches) if microbatches is not None else None,
            model=[self.ddp], num_microbatches=num_microbatches, seq_length=self.spec.rows(),
            micro_batch_size=self.cfg.parallel.micro_batch, forward_only=True)
        return self._global_mean_loss(losses)

    def update(self) -> dict:
        """Clip, step the optimizer and the learning-rate schedule; returns grad norm and lr."""
        _, grad_norm, _ = self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(increment=1)
        return {"grad_norm": float(grad_norm or 0.0), "lr": lr}

    def train_step(self, microbatches: list[MicroBatch] | None, num_microbatches: int,
                   before_update: Callable[[], None] | None = None) -> dict:
        """One optimizer step; returns loss, grad norm, lr and `skipped`: a non-finite loss or
        gradient on any rank skips the update and the schedule (Megatron-LM skips an overflowed
        step the same way), so a bad batch never reaches the weights. `before_update` runs between
        the forward-backward and the update."""
        loss = self.accumulate(microbatches, num_microbatches)
        if before_update is not None:
            before_update()
        if not self._finite(loss):
            return {"loss": loss, "grad_norm": float("nan"), "lr": self.optimizer.param_groups[0]["lr"],
                    "skipped": True}
        return {"loss": loss, **self.update(), "skipped": False}

    def sync_params(self) -> None:
        """Finish the distributed optimizer's weight all-gather now (with parallel.overlap_param_gather
        it is otherwise left to the next forward), before the weights are read outside a step."""
        if self.ddp.ddp_config.overlap_param_gather:
            self.ddp.start_param_sync(force_sync=True)

    def _finite(self, loss: float) -> bool:
        """Whether the global loss and every rank's reduced gradients are finite (collective)."""
        bad = not math.isfinite(loss) or any(not torch.isfinite(buffer.grad_data).all()
                                             for buffer in self.ddp.buffers + self.ddp.expert_parallel_buffers)
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return not bad
        flag = torch.tensor([float(bad)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return not flag.item()

    def _global_mean_loss(self, losses: list[dict]) -> float:
        """Mean loss over the global batch, on every rank (only last-stage ranks computed it)."""
        local = torch.stack([x["loss"] for x in losses]).mean() if losses else torch.zeros(())
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return float(local)
        total = local.detach().float().reshape(1).to(self.device)
        dist.all_reduce(total)
        return float(total) / (self.layout.dp * self.layout.tp)

    @property
    def device(self) -> torch.device:
        return next(self.ddp.module.parameters()).device
