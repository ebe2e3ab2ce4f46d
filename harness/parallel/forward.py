"""Inference forward through a pipeline: (z, t, text) -> v on every rank of the model's stages."""

from __future__ import annotations

import torch
import torch.distributed as dist

from harness.config import RunConfig
from harness.diffusion.objective import v_of
from harness.diffusion.schedule import Schedule
from harness.model.conditioning import TextInput
from harness.model.uvit import UViT
from harness.parallel.layout import Layout
from harness.parallel.pipeline import pack, pack_spec, unpack


def stage_forward(model: UViT, cfg: RunConfig, layout: Layout):
    """(z, t, text) -> v on every rank of the model's pipeline, whatever the network predicts
    (`diffusion.prediction`)."""
    net = model if layout.pp == 1 else _pipeline_forward(model, cfg, layout)
    if cfg.diffusion.prediction == "v":
        return net
    schedule = Schedule.of(cfg.model.resolution_px, cfg.diffusion)
    return lambda z, t, text: v_of(net(z, t, text), z, schedule.logsnr(t), cfg.diffusion.prediction)


def _pipeline_forward(model: UViT, cfg: RunConfig, layout: Layout):
    """(z, t, text) -> the network's output on every rank of a pipeline: each stage runs its part,
    activations go forward with point-to-point sends, and the last stage broadcasts the output back
    to all stages."""
    spec = pack_spec(model, cfg)

    def forward(z: torch.Tensor, t: torch.Tensor, text: TextInput) -> torch.Tensor:
        if layout.is_first_stage:
            state = model.embed(z, t, text)
        else:
            packed = torch.empty(spec.rows(), z.shape[0], spec.hidden, dtype=model.config.params_dtype, device=z.device)
            dist.recv(packed, src=layout.pp_prev_rank)
            state = unpack(packed, spec)
        state = model.run_layers(state)
        if layout.is_last_stage:
            out = model.finish(state).float()
        else:
            dist.send(pack(state, spec), dst=layout.pp_next_rank)
            out = torch.empty(z.shape, dtype=torch.float32, device=z.device)
        dist.broadcast(out, src=layout.pp_last_rank, group=layout.pp_group)
        return out
    return forward
