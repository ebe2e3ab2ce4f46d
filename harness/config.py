"""Run configuration: a dataclass schema, YAML files with `base:` inheritance, dotted CLI overrides.

Validation happens before any compute: an unknown key, a wrong type or an impossible value is a
one-line ``ConfigError`` that names the key (and the file it came from).

    harness-train --config configs/demo/core.yaml train.steps=200 parallel.tp=2
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STAGES = ("core", "grow-frozen", "grow-finetune")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


@dataclass
class ModelConfig:
    size: str = "tiny"
    """Key of harness.model.sizes.MODEL_SIZES: tiny, small, 2b, 4b, 8b."""
    arch: str = "shallow"
    """`shallow`: the Shallow-UViT of core pre-training; `grown`: the UNet grown around the core."""
    resolution_px: int = 64
    """Image side the model denoises."""
    core_grid: int = 16
    """Side of the token grid the core runs on (16x16 = 256 tokens)."""
    level_channels: list[int] = field(default_factory=list)
    """Grown model only: channels of each level, innermost (next to the core) first. Empty: from the
    size's defaults. The grown model has log2(resolution_px / core_grid) levels."""
    blocks_per_level: int = 1
    """Grown model only: ResBlocks per level in the encoder (and in the decoder)."""
    text_max_len: int = 16
    """Caption tokens seen by the model (longer captions are truncated)."""
    text_encoder: str = "learned"
    """`learned`: SentencePiece tokens and a trainable text transformer; `precomputed`: the
    shards' `text_emb` (a frozen encoder's output)."""
    dropout: float = 0.0
    """Dropout inside the core."""


@dataclass
class DiffusionConfig:
    base_resolution_px: int = 64
    """Resolution whose cosine schedule is unshifted; logSNR shift = 2 log(base / resolution)."""
    logsnr_min: float = -15.0
    """Lowest log-SNR of the schedule (t = 1)."""
    logsnr_max: float = 15.0
    """Highest log-SNR of the schedule (t = 0)."""
    caption_drop_prob: float = 0.1
    """Probability of training a sample with the null caption (classifier-free guidance)."""
    sampler: str = "ddim"
    """`ddim` or `ancestral` (DDPM)."""
    sample_steps: int = 50
    """Denoising steps when sampling."""
    guidance_scale: float = 3.0
    """Classifier-free guidance weight w: v = v_uncond + w (v_cond - v_uncond)."""


@dataclass
class DataConfig:
    path: str = "data/emoji/train"
    """Training data set folder (manifest.json + shards)."""
    heldout_path: str = "data/emoji/heldout"
    """Held-out data set folder, for sample grids and evaluation."""
    tokenizer: str = ""
    """SentencePiece model; empty: <path>/tokenizer.model."""
    seed: int = 1234
    """Seed of the per-epoch sample permutation."""
    verify_checksums: bool = True
    """Check each shard's sha256 against the manifest when first opened."""
    on_corrupt: str = "error"
    """A sample or shard that cannot be read (or fails its checksum): `error` stops the run naming
    it; `skip` logs the file and index, counts it and trains on another sample of the batch."""
    max_corrupt: int = 100
    """With on_corrupt=skip: stop once this many samples were skipped (a data set that is mostly bad)."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    decay_steps: int = 0
    """Steps of the cosine decay to min_lr (0: train.steps)."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.99
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights used for sampling (0 disables)."""
    max_skipped_steps: int = 10
    """Steps with a non-finite loss or gradient are skipped (no update, counted in the log); this many
    in a row stop the run with an error naming the step."""
    override_schedule: bool = False
    """On resume, take the learning-rate and weight-decay schedule from this config instead of the
    checkpoint (Megatron-LM's --override-opt_param-scheduler); the step count still comes from the
    checkpoint. Without it a resumed run keeps the schedule it was started with."""


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor-parallel size (shards the core's attention heads and MLP)."""
    pp: int = 1
    """Pipeline-parallel size (splits the core's layers into stages)."""
    micro_batch: int = 8
    """Samples per micro-batch on one data-parallel rank."""
    global_batch: int = 32
    """Samples per optimizer step over all data-parallel ranks."""
    distributed_optimizer: bool = True
    """Shard optimizer state across data-parallel ranks (Megatron DistributedOptimizer)."""
    timeout_s: float = 600.0
    """Seconds a collective may wait before the ranks give up (a dead or stuck peer)."""
    pp_layers: list[int] = field(default_factory=list)
    """Core layers per pipeline stage; empty: an even split (remainder to the middle stages)."""


@dataclass
class TrainConfig:
    stage: str = "core"
    """`core`, `grow-frozen` (only new layers train) or `grow-finetune` (everything trains)."""
    steps: int = 1000
    """Optimizer steps of this stage."""
    time_limit_minutes: float = 0.0
    """Stop (with a checkpoint) after this much training time; 0: no limit."""
    time_limit_completes: bool = False
    """A stage stopped by its time limit counts as complete (exit 0, `check_config.py --finished`):
    for stages whose budget is time rather than steps (the CPU demo). Otherwise it is `stopped`
    (exit 3), so a chain's next stage does not start from it."""
    run_dir: str = "runs/default"
    """Folder for checkpoints, logs, sample grids and plots."""
    init_from: str = ""
    """Checkpoint to start the stage from when run_dir holds none (e.g. the output of tools/grow.py)."""
    seed: int = 0
    """Seed of weight initialisation and of the diffusion noise."""
    log_every_steps: int = 10
    """Steps between log lines."""
    sample_every_steps: int = 500
    """Steps between sample grids of held-out captions (0: only at the end)."""
    ckpt_every_steps: int = 500
    """Steps between checkpoints (a checkpoint is also written at the end)."""
    requeue: bool = True
    """On SIGUSR1 under Slurm (time limit near), requeue the job after the checkpoint."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept in run_dir (older ones are deleted)."""
    num_samples: int = 8
    """Held-out captions in each sample grid."""
    precision: str = "fp32"
    """`fp32`, `bf16` (bf16 weights and compute, fp32 main weights in the optimizer), or `auto`: bf16
    where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX),
    else fp32. Checkpoints record the precision that ran (meta.json `precision`)."""
    matmul_precision: str = "medium"
    """torch.set_float32_matmul_precision: `highest`, `high` or `medium`."""
    continuity_samples: int = 64
    """Samples on which a stage started from a checkpoint scores the loaded weights before its first
    step, logged next to the source's last loss (0: no check)."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _check_type(key: str, value, annotation):
    """Return value converted to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_type(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)           # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    if annotation in (int, float, str) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def _merge(obj, values: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key}{hint}")
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
            _merge(getattr(obj, name), value, f"{key}.", source)
        else:
            try:
                setattr(obj, name, _check_type(key, value, hints[name]))
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, resolving `base:` (relative to the file) recursively."""
    if path in seen:
        raise ConfigError(f"{path}: `base:` cycle through {', '.join(map(str, seen))}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = values.pop("base", None)
    if base is None:
        return values
    merged = _load_yaml((path.parent / base).resolve(), seen + (path,))
    _deep_update(merged, values)
    return merged


def _deep_update(into: dict, values: dict) -> None:
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


def parse_override(text: str) -> dict:
    """`a.b=value` -> {"a": {"b": value}}, value parsed as a YAML scalar or list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def from_dict(values: dict, source: str = "config", overrides: list[str] = ()) -> RunConfig:
    """Build and validate a RunConfig from nested plain values (e.g. a checkpoint's), then overrides."""
    cfg = RunConfig()
    _merge(cfg, values, "", source)
    for text in overrides:
        _merge(cfg, parse_override(text), "", "command line")
    validate(cfg, source)
    return cfg


def load(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when path is None), apply overrides, validate."""
    cfg = RunConfig()
    if path is not None:
        _merge(cfg, _load_yaml(Path(path).resolve()), "", str(path))
    for text in overrides:
        _merge(cfg, parse_override(text), "", "command line")
    validate(cfg, str(path) if path else "config")
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    """Plain nested values (for meta.json and logs)."""
    return dataclasses.asdict(cfg)


def _require(ok: bool, source: str, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key} {message}")


# Numeric ranges, checked for every field listed (list fields: every entry); every float must also
# be finite. "[a, b)" etc. are intervals, ">= a" / "> a" half-lines.
RANGES = {
    "model.resolution_px": ">= 1", "model.core_grid": ">= 1", "model.level_channels": ">= 1",
    "model.blocks_per_level": ">= 1", "model.text_max_len": ">= 1", "model.dropout": "[0, 1)",
    "diffusion.base_resolution_px": ">= 1", "diffusion.caption_drop_prob": "[0, 1)", "diffusion.sample_steps": ">= 1",
    "diffusion.guidance_scale": ">= 0",
    "data.seed": ">= 0", "data.max_corrupt": ">= 0",
    "optim.lr": "> 0", "optim.min_lr": ">= 0", "optim.warmup_steps": ">= 0", "optim.decay_steps": ">= 0",
    "optim.weight_decay": ">= 0", "optim.beta1": "[0, 1)", "optim.beta2": "[0, 1)", "optim.eps": "> 0",
    "optim.clip_grad": ">= 0", "optim.ema_decay": "[0, 1)", "optim.max_skipped_steps": ">= 1",
    "parallel.tp": ">= 1", "parallel.pp": ">= 1", "parallel.micro_batch": ">= 1", "parallel.global_batch": ">= 1",
    "parallel.timeout_s": "> 0", "parallel.pp_layers": ">= 1",
    "train.steps": ">= 1", "train.time_limit_minutes": ">= 0", "train.seed": ">= 0", "train.log_every_steps": ">= 1",
    "train.sample_every_steps": ">= 0", "train.ckpt_every_steps": ">= 1", "train.keep_checkpoints": ">= 1",
    "train.num_samples": ">= 1", "train.continuity_samples": ">= 0",
}


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
    from harness.model.sizes import MODEL_SIZES

    m, d, p, t, o = cfg.model, cfg.diffusion, cfg.parallel, cfg.train, cfg.optim
    _check_numbers(cfg, source)
    _require(m.size in MODEL_SIZES, source, "model.size", f"must be one of {sorted(MODEL_SIZES)}, got {m.size!r}")
    _require(m.arch in ("shallow", "grown"), source, "model.arch", f"must be shallow or grown, got {m.arch!r}")
    _require(m.text_encoder in ("learned", "precomputed"), source, "model.text_encoder",
             f"must be learned or precomputed, got {m.text_encoder!r}")
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
    _require(d.logsnr_min < d.logsnr_max, source, "diffusion.logsnr_min", "must be below diffusion.logsnr_max")
    _require(o.min_lr <= o.lr, source, "optim.min_lr", f"({o.min_lr}) must not exceed optim.lr ({o.lr})")
    _require(cfg.data.on_corrupt in ("error", "skip"), source, "data.on_corrupt",
             f"must be error or skip, got {cfg.data.on_corrupt!r}")
    _require(p.global_batch % p.micro_batch == 0, source, "parallel.global_batch",
             f"({p.global_batch}) must be a multiple of parallel.micro_batch ({p.micro_batch})")
    _require(t.stage in STAGES, source, "train.stage", f"must be one of {STAGES}, got {t.stage!r}")
    _require((t.stage == "core") == (m.arch == "shallow"), source, "train.stage",
             f"{t.stage!r} does not fit model.arch {m.arch!r} (core trains the shallow model, "
             "grow-* stages the grown one)")
    _require(t.precision in ("fp32", "bf16", "auto"), source, "train.precision",
             f"must be fp32, bf16 or auto, got {t.precision!r}")
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
    return dp
