"""Pipeline-parallel glue: which core layers a stage holds, and the one tensor stages exchange.

Megatron's schedules send one activation of shape (seq_length, micro_batch, hidden) between stages
and back-propagate only that tensor (schedules.py `backward_step` uses output_tensor[0]), so
everything a later stage needs - core tokens, modulation, caption context, conditioning vector and
the UNet skip activations - is flattened per sample and packed into it, rows padded to the hidden size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.config import RunConfig
from harness.config.sizes import MODEL_SIZES
from harness.model.compiled import apply_compile
from harness.model.uvit import StageState, UViT, build_model
from harness.parallel.layout import Layout, precision


def split_layers(num_layers: int, pp: int, layers_per_stage: list[int] | None = None) -> list[range]:
    """Global layer indices of each pipeline stage.

    Even split by default; the remainder goes to the middle stages first, since the first stage
    also runs the encoder and the last the decoder. `layers_per_stage` states the split explicitly.
    """
    if layers_per_stage:
        if len(layers_per_stage) != pp or sum(layers_per_stage) != num_layers or min(layers_per_stage) < 1:
            raise ValueError(f"parallel.pp_layers {layers_per_stage} must be {pp} counts >= 1 summing to {num_layers}")
        counts = list(layers_per_stage)
    else:
        if pp > num_layers:
            raise ValueError(f"parallel.pp ({pp}) cannot exceed the core's {num_layers} layers")
        counts = [num_layers // pp] * pp
        order = list(range(1, pp - 1)) + [0, pp - 1] if pp > 2 else list(range(pp))
        for i in range(num_layers % pp):
            counts[order[i]] += 1
    starts = [sum(counts[:i]) for i in range(pp)]
    return [range(s, s + c) for s, c in zip(starts, counts)]


@dataclass(frozen=True)
class PackSpec:
    """Per-sample shapes of the StageState pieces, in packing order."""

    hidden: int                              # H
    tokens: int                              # N, core grid tokens
    text_len: int                            # L, caption tokens
    skips: tuple[tuple[int, int], ...]       # (channels, side) per skip
    split: int = 1                           # sequence parallelism: the TP ranks share the rows

    def piece_shapes(self) -> list[tuple[int, ...]]:
        h = self.hidden
        return [(self.tokens, h), (6, h), (self.text_len, h), (self.text_len,), (h,)] + [
            (c, s, s) for c, s in self.skips]

    def rows(self) -> int:
        """Packed rows per sample: the seq_length Megatron's p2p communication uses (a multiple of
        `split`: with sequence parallelism each TP rank sends and receives rows / tp of them)."""
        rows = sum(math.ceil(math.prod(s) / self.hidden) for s in self.piece_shapes())
        return math.ceil(rows / self.split) * self.split


def pack(state: StageState, spec: PackSpec) -> torch.Tensor:
    """StageState -> (rows, B, H), differentiable in every floating piece."""
    b = state.hidden.shape[1]
    pieces = [state.hidden.transpose(0, 1), state.mod, state.context,
              state.context_valid.to(state.hidden.dtype), state.cond] + list(state.skips)
    flat = []
    for piece in pieces:
        x = piece.reshape(b, -1)
        flat.append(F.pad(x, (0, (-x.shape[1]) % spec.hidden)))
    packed = torch.cat(flat, dim=1)
    packed = F.pad(packed, (0, spec.rows() * spec.hidden - packed.shape[1]))
    return packed.view(b, -1, spec.hidden).transpose(0, 1).contiguous()


def unpack(packed: torch.Tensor, spec: PackSpec) -> StageState:
    """(rows, B, H) -> StageState, the inverse of `pack`."""
    b = packed.shape[1]
    flat = packed.transpose(0, 1).reshape(b, -1)
    pieces, offset = [], 0
    for shape in spec.piece_shapes():
        n = math.prod(shape)
        pieces.append(flat[:, offset:offset + n].reshape(b, *shape))
        offset += math.ceil(n / spec.hidden) * spec.hidden
    hidden, mod, context, valid, cond, *skips = pieces
    return StageState(hidden.transpose(0, 1).contiguous(), mod, context, valid > 0.5, cond, skips)


def build_stage(cfg: RunConfig, layout: Layout, *, vocab_size: int | None, text_dim: int | None, device: torch.device,
                initialize: bool = True) -> UViT:
    """Build this rank's pipeline stage of the configured model (all of it when pp = 1), on `device`."""
    stages = split_layers(MODEL_SIZES[cfg.model.size].layers, layout.pp, cfg.parallel.pp_layers)
    dtype = torch.bfloat16 if precision(cfg) == "bf16" else torch.float32
    model = build_model(cfg.model, vocab_size=vocab_size, text_dim=text_dim, seed=cfg.train.seed, tp=layout.tp,
                        pp=layout.pp, layer_ids=stages[layout.pp_rank], pre_process=layout.is_first_stage,
                        post_process=layout.is_last_stage, dtype=dtype, initialize=initialize,
                        sequence_parallel=cfg.parallel.sequence_parallel)
    apply_recompute(model, cfg.parallel)
    if cfg.train.compile:
        apply_compile(model)
    return model.to(device=device, dtype=dtype)


def apply_recompute(model: UViT, p) -> None:
    """parallel.recompute: `core` re-runs every core layer in backward, `full` also the ResBlocks at
    recompute_min_px or more (as Megatron's recompute_granularity, applied after the model is built)."""
    model.core.recompute = p.recompute in ("core", "full")
    model.recompute_min_px = p.recompute_min_px if p.recompute == "full" else None


def pack_spec(model: UViT, cfg: RunConfig) -> PackSpec:
    """The packing of this model's StageState at the configured caption length."""
    return PackSpec(hidden=model.config.hidden_size, tokens=cfg.model.core_grid ** 2, text_len=cfg.model.text_max_len,
                    skips=tuple(model.skip_shapes()), split=cfg.parallel.tp if model.config.sequence_parallel else 1)
