"""What a training checkpoint holds, and putting it back: model, EMA, optimizer, schedule, position.

Keys: `model.<param>`, `ema.<param>` (same sharding as the weight it averages) and Megatron's
optimizer state in model space (`fully_reshardable`), so every part loads at any layout.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from harness.checkpoint import io
from harness.checkpoint.sharded import (
    model_sharded_state_dict,
    plain_state_dict,
    with_prefix,
)
from harness.checkpoint.splice import Borrowed, splice
from harness.config import RunConfig, to_dict
from harness.parallel.layout import Layout, max_over_ranks, precision


@dataclass
class TrainState:
    """Progress of a stage; with the config and seed it determines the rest of the run."""

    step: int = 0
    consumed_samples: int = 0
    lineage: list[dict] = field(default_factory=list)
    loss: float | None = None      # the last logged training loss (the continuity check compares with it)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)   # a resume keeps it; pruning goes by it
    skipped_steps: int = 0         # steps skipped for a non-finite loss or gradient, in all
    complete: bool = False         # the stage ended here (train.steps, or a time limit that completes it)


def _sharded(model, ema=None, optimizer=None, is_loading: bool = False) -> dict:
    """The sharded state dict of a stage; `ema` is anything with a `shadow` dict of fp32 tensors."""
    base = model_sharded_state_dict(model)
    state = {"model": with_prefix(base, "model.")}
    if ema is not None:
        state["ema"] = with_prefix(base, "ema.", ema.shadow)
    if optimizer is not None:
        _materialise_state(optimizer)
        # `fully_reshardable`: optimizer state in model space, loadable at any (TP, PP, DP).
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"], is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    return state


def save(run_dir: str | Path, cfg: RunConfig, layout: Layout, state: TrainState, model, ema, optimizer,
         scheduler, frozen: list[str], files: dict[str, bytes] | None = None, protect: tuple[Path, ...] = (),
         background=None, text_encoder: dict | None = None, borrowed: Borrowed | None = None) -> Path:
    """Collectively write a complete training checkpoint of this step (in the background with an
    AsyncCallsQueue); non-finite weights or EMA are never written (CheckpointError naming the step
    and tensor). `text_encoder`: the frozen encoder's {name, revision, dim} (model.text_encoder=hf).
    `borrowed`: weight and EMA keys whose bytes are copied from another checkpoint instead (growing;
    that checkpoint's save checked them), in a synchronous save."""
    skip = set(borrowed.keys) if borrowed else set()
    if skip and background is not None:
        raise ValueError("a save that borrows tensors from another checkpoint is synchronous")
    _check_finite(state.step, model, ema, skip)
    meta = {
        "stage": cfg.train.stage, "consumed_samples": state.consumed_samples, "seed": cfg.train.seed,
        "config": to_dict(cfg), "layout": {k: v for k, v in layout.describe().items() if not k.endswith("rank")},
        "scheduler": scheduler.state_dict(), "frozen": frozen, "lineage": state.lineage, "loss": state.loss,
        "precision": precision(cfg), "run_id": state.run_id, "skipped_steps": state.skipped_steps,
        "complete": state.complete, "text_encoder": text_encoder,
    }
    sharded = _sharded(model, ema, optimizer)
    for family in ("model", "ema"):
        sharded[family] = {k: v for k, v in sharded[family].items() if k not in skip}
    return io.save(run_dir, state.step, sharded, meta, keep=cfg.train.keep_checkpoints, files=files,
                   protect=protect, background=background, amend=partial(splice, borrowed=borrowed) if skip else None)


def _check_finite(step: int, model, ema, skip: set[str] = frozenset()) -> None:
    """Raise on every rank if any rank holds a non-finite weight or EMA value (collective); keys in
    `skip` are not checked."""
    # One fused max-|x| per tensor (NaN and inf propagate): a single read of each tensor, where
    # `isfinite(t).all()` also writes a bool copy of it (9x slower on a 100 M-element tensor).
    pairs = [(f"model.{n}", p.detach()) for n, p in model.named_parameters()]
    pairs += [(f"ema.{n}", t) for n, t in ema.shadow.items()]
    kept = [(n, t) for n, t in pairs if n not in skip]        # none on a pipeline rank holding only skipped ones
    names = [n for n, _ in kept]
    peaks = torch.stack(torch._foreach_norm([t for _, t in kept], float("inf"))).float() if kept else torch.zeros(0)
    bad = next((names[i] for i in torch.nonzero(~torch.isfinite(peaks)).flatten().tolist()), None)
    if max_over_ranks(float(bad is not None)):
        where = bad or "a tensor of another rank"
        raise io.CheckpointError(f"step {step}: not saved, the weights are not finite ({where}); "
                                 "the last good checkpoint stays `latest`")


def check_text_encoder(ckpt_dir: str | Path, meta: dict, found: dict | None) -> None:
    """Raise IncompatibleCheckpoint (one line naming the checkpoint and both encoders) if the checkpoint
    was trained with another frozen text encoder than `found` (name, revision or width)."""
    recorded = meta.get("text_encoder")
    if recorded and found and recorded != found:
        show = lambda e: f"{e['name']} (revision {e['revision']}, {e['dim']}-d)"  # noqa: E731
        raise io.IncompatibleCheckpoint(f"{ckpt_dir}: trained with text encoder {show(recorded)}, but "
                                        f"model.text_encoder_path gives {show(found)}; point it at the encoder "
                                        "the checkpoint was trained with")


def check_prediction(ckpt_dir: str | Path, meta: dict, prediction: str) -> None:
    """Raise IncompatibleCheckpoint (one line) if the checkpoint's network predicts another quantity
    (`diffusion.prediction`) than this run's: its output layer would be trained as the other one."""
    recorded = meta["config"].get("diffusion", {}).get("prediction", "v")
    if recorded != prediction:
        raise io.IncompatibleCheckpoint(f"{ckpt_dir}: its network predicts {recorded} (diffusion.prediction), "
                                        f"this run's config says {prediction}; set diffusion.prediction={recorded}, "
                                        "or grow a new output layer with tools/grow.py")


def restore(ckpt_dir: Path, model, ema, optimizer, scheduler, *, with_optimizer: bool = True,
            text_encoder: dict | None = None, prediction: str = "v") -> TrainState:
    """Load a checkpoint into this rank's model (and EMA, optimizer, schedule); return its TrainState.
    `text_encoder`: this run's frozen encoder, refused if the checkpoint records another; `prediction`:
    what this run's network predicts, refused if the checkpoint's predicts another."""
    meta = io.read_meta(ckpt_dir)
    check_text_encoder(ckpt_dir, meta, text_encoder)
    check_prediction(ckpt_dir, meta, prediction)
    families = ("model.", "ema.") + (("optimizer.",) if with_optimizer else ())
    request = _sharded(model, ema, optimizer if with_optimizer else None, is_loading=True)
    loaded = io.load(ckpt_dir, request, families)
    model.load_state_dict({k.removeprefix("model."): v for k, v in plain_state_dict(loaded["model"]).items()},
                          strict=True)
    for key, tensor in plain_state_dict(loaded["ema"]).items():
        ema.shadow[key.removeprefix("ema.")].copy_(tensor)
    if with_optimizer:
        optimizer.load_state_dict(loaded["optimizer"])
        _unshare_steps(optimizer)
        scheduler.load_state_dict(meta["scheduler"])
    return TrainState(step=meta["step"], consumed_samples=meta["consumed_samples"], lineage=meta.get("lineage", []),
                      loss=meta.get("loss"), run_id=meta.get("run_id", ""), skipped_steps=meta.get("skipped_steps", 0),
                      complete=meta.get("complete", False))


def load_weights(ckpt_dir: Path, model, *, use_ema: bool = True, text_encoder: dict | None = None) -> dict:
    """Load a checkpoint's EMA (or raw) weights into this rank's stage for inference; returns meta.json.
    `text_encoder`: the frozen encoder in use, refused if the checkpoint records another."""
    meta = io.read_meta(ckpt_dir)
    check_text_encoder(ckpt_dir, meta, text_encoder)
    family = "ema." if use_ema else "model."
    base = model_sharded_state_dict(model)
    fp32 = {k: torch.empty_like(sh.data, dtype=torch.float32) for k, sh in base.items()}  # EMA is stored in fp32
    loaded = io.load(ckpt_dir, {"weights": with_prefix(base, family, fp32 if use_ema else None)}, (family,))
    model.load_state_dict({k.removeprefix(family): v for k, v in plain_state_dict(loaded["weights"]).items()},
                          strict=True)
    return meta


def _materialise_state(optimizer) -> None:
    """Create torch AdamW's state (zero moments, step 0) before it exists: torch makes it lazily at the
    first step, and Megatron's distributed optimizer needs it to describe what it saves or loads. A
    step with zero gradients at lr 0 creates it without changing any weight; resetting the step
    count keeps the state exactly that of an optimizer that has not stepped yet."""
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = chained.optimizer
        if inner.state:
            continue
        saved = [group["lr"] for group in inner.param_groups]
        for group in inner.param_groups:
            group["lr"] = 0.0
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        inner.step()
        for st in inner.state.values():
            st["step"] = torch.zeros_like(st["step"])
        for group, lr in zip(inner.param_groups, saved):
            group["lr"] = lr
            for p in group["params"]:
                p.grad = None


def _unshare_steps(optimizer) -> None:
    """Megatron's distributed optimizer restores torch Adam's per-parameter "step" as one tensor
    object shared by all parameters; the fused/foreach kernels increment each parameter's step in
    place, so a shared one would advance once per parameter per update. Give each its own copy."""
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in chained.optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].clone()
