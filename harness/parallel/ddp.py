"""Apply a layout to a built model: Megatron DDP (optionally its distributed optimizer), the
optimizer and the learning-rate schedule. The model's math knows none of this."""

from __future__ import annotations

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from harness.config import RunConfig
from harness.model.uvit import UViT
from harness.parallel import megatron_fixes  # noqa: F401  (patches Megatron-core 0.16.1 at import)
from harness.parallel.layout import precision


def wrap_ddp(model: UViT, cfg: RunConfig) -> DistributedDataParallel:
    """Wrap the stage's model in Megatron DDP (contiguous fp32 grad buffers; frozen params excluded).

    With parallel.overlap_grad_reduce each bucket's reduce-scatter (all-reduce without the
    distributed optimizer) starts from a backward hook as soon as its gradients are complete; with
    parallel.overlap_param_gather the distributed optimizer's weight all-gather is left to the next
    forward, whose pre-hooks wait for each bucket just before it is used (Megatron-LM's
    --overlap-grad-reduce / --overlap-param-gather)."""
    p = cfg.parallel
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather, bucket_size=p.bucket_size or None,
        # Non-finite gradients skip the step (harness/train/step.py) rather than stop the run here.
        use_distributed_optimizer=p.distributed_optimizer, check_for_nan_in_grad=False)
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
    ddp.broadcast_params()
    # The schedules call this: no gradient sync before the last micro-batch (its reduction,
    # finalize_model_grads, is hooked in by harness/train/step.py's StepRunner).
    model.config.no_sync_func = ddp.no_sync
    return ddp


def build_optimizer(ddp: DistributedDataParallel, cfg: RunConfig):
    """Megatron's (distributed) AdamW with gradient clipping, and warm-up + cosine LR schedule."""
    o = cfg.optim
    bf16 = precision(cfg) == "bf16"
    opt_config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
        adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.clip_grad, bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer)
    optimizer = get_megatron_optimizer(opt_config, [ddp])
    decay_steps = o.decay_steps or cfg.train.steps
    for inner in _torch_optimizers(optimizer):
        # Megatron builds torch.optim.AdamW without `fused`; the fused kernel is faster and
        # computes the same update (tests/unit/test_train.py checks it).
        for group in inner.param_groups:
            group["fused"], group["foreach"] = True, False
    model = ddp.module
    model.config.grad_scale_func = optimizer.scale_loss
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=o.warmup_steps,
        lr_decay_steps=max(decay_steps, o.warmup_steps + 1), lr_decay_style="cosine",
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=decay_steps, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=not o.override_schedule, override_opt_param_scheduler=o.override_schedule)
    return optimizer, scheduler


def override_learning_rates(optimizer, scheduler, cfg: RunConfig) -> None:
    """Put this config's peak and final learning rates back into a restored optimizer: Megatron's
    param groups carry their own `max_lr` / `min_lr`, which win over the scheduler's and which an
    optimizer state dict restores from the checkpoint. Then recompute the current lr."""
    for group in optimizer.param_groups:
        group["max_lr"], group["min_lr"] = cfg.optim.lr, cfg.optim.min_lr
    scheduler.step(increment=0)


def _torch_optimizers(optimizer):
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [opt.optimizer for opt in chained if getattr(opt, "optimizer", None) is not None]
