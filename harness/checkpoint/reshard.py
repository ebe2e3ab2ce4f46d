"""Checkpoint conversions: to another (TP, PP, DP) layout, and to / from one safetensors file.

Checkpoint keys and global shapes do not depend on the layout (weights, EMA and Megatron's
optimizer state in model space, `fully_reshardable`), and any layout loads any checkpoint. So a
conversion that changes only how the run is laid out (`LAYOUT_KEYS`) needs no model: it copies the
files and records the target layout in the config (`relayout`). Any other change builds the stages
of the target layout, loads the complete training state and writes it again (`load_stage` + save).
Release files hold full tensors (no pickles) and the run config and tokenizer in the safetensors
header.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from harness.checkpoint import io
from harness.checkpoint.stage import TrainingStage, bundled_tokenizer
from harness.checkpoint.state import TrainState
from harness.config import from_dict, to_dict
from harness.data.tokenizer import TOKENIZER_FILE
from harness.model.conditioning import TextInput
from harness.parallel.forward import stage_forward
from harness.parallel.layout import Layout, device

FORMAT = "greedy-growing-harness/1"


@torch.no_grad()
def stage_outputs(stage: TrainingStage, seed: int = 0, batch: int = 2) -> torch.Tensor:
    """v predicted for a fixed random batch, on every rank (raw and EMA weights, concatenated)."""
    g = torch.Generator().manual_seed(seed)
    res, dev = stage.cfg.model.resolution_px, device()
    z = torch.randn(batch, 3, res, res, generator=g).to(dev)
    t = torch.rand(batch, generator=g).to(dev)
    vocab = stage.text.vocab_size or 2
    text = TextInput(lengths=torch.full((batch,), 4).to(dev),
                     tokens=torch.randint(0, vocab, (batch, stage.cfg.model.text_max_len), generator=g).to(dev))
    forward = stage_forward(stage.model, stage.cfg, stage.layout)
    stage.model.eval()
    raw = forward(z, t, text)
    with stage.ema.applied(stage.model):
        averaged = forward(z, t, text)
    return torch.cat([raw, averaged])


# Config keys that change how a run is laid out and executed, not what its checkpoint holds.
LAYOUT_KEYS = frozenset({"parallel.tp", "parallel.pp", "parallel.micro_batch", "parallel.sequence_parallel",
                         "parallel.recompute", "parallel.recompute_min_px", "parallel.overlap_grad_reduce",
                         "parallel.overlap_param_gather", "parallel.bucket_size", "parallel.timeout_s",
                         "train.compile"})


def layout_only(overrides: list[str]) -> bool:
    """Whether every override is a LAYOUT_KEYS one (a conversion that copies files)."""
    return all(o.partition("=")[0].strip() in LAYOUT_KEYS for o in overrides)


def relayout(source: Path, run_dir: Path, overrides: list[str]) -> Path:
    """The layout-only conversion, in this process: the source's files, its meta.json with the
    overridden (validated) config; `layout` still says what the files were written at."""
    if not layout_only(overrides):
        raise ValueError(f"not a layout-only change: {[o for o in overrides if not layout_only([o])]}")
    if problems := io.verify(source):
        raise io.CheckpointError("; ".join(problems))
    meta = io.read_meta(source)
    cfg = from_dict(meta["config"], str(source / "meta.json"), [*overrides, f"train.run_dir={run_dir}"])
    meta["config"] = to_dict(cfg)
    return io.copy_checkpoint(source, run_dir, meta, keep=cfg.train.keep_checkpoints)


def load_stage(ckpt: Path, layout: Layout, overrides: list[str] = ()) -> tuple[TrainingStage, TrainState]:
    """A checkpoint's complete training state, restored into the current layout."""
    meta = io.read_meta(ckpt)
    cfg = from_dict(meta["config"], str(ckpt / "meta.json"), list(overrides))
    stage = TrainingStage.build(cfg, layout, frozen=meta.get("frozen", []), tokenizer=bundled_tokenizer(ckpt))
    return stage, stage.restore(ckpt)


def export_safetensors(ckpt: Path, out: Path, *, use_ema: bool = True) -> Path:
    """One consolidated file of full tensors (EMA or raw weights), the run config, frozen set and
    tokenizer in its header. Reads the checkpoint in this process alone."""
    meta = io.read_meta(ckpt)
    family = "ema." if use_ema else "model."
    tensors = io.read_tensors(ckpt, family)
    header = {"format": FORMAT, "config": json.dumps(meta["config"]), "stage": meta["stage"], "step": str(meta["step"]),
              "consumed_samples": str(meta["consumed_samples"]), "frozen": json.dumps(meta.get("frozen", [])),
              "weights": family.rstrip(".")}
    tokenizer = bundled_tokenizer(ckpt)
    if tokenizer:
        header[TOKENIZER_FILE] = base64.b64encode(tokenizer.read_bytes()).decode()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=header)
    return out


def import_safetensors(path: Path, run_dir: Path, layout: Layout, overrides: list[str] = ()) -> Path:
    """A training checkpoint (weights = EMA = the file's tensors, fresh optimizer) from a release file."""
    if layout.world != 1:
        raise ValueError(f"import reads full tensors in one process; run it without a launcher (world {layout.world})")
    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: not a file written by tools/reshard.py --export (no format tag in the header)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # The header's config says what model to build; where this copy lives and starts from is ours:
    # its run directory is --out, it starts from nothing else, its tokenizer is the one in the header.
    cfg = from_dict(json.loads(header["config"]), f"{path} header",
                    [f"train.run_dir={run_dir}", "train.init_from=", "data.tokenizer=", *overrides])
    tokenizer = None
    if TOKENIZER_FILE in header:
        tokenizer = Path(run_dir) / f".imported-{TOKENIZER_FILE}"
        tokenizer.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.write_bytes(base64.b64decode(header[TOKENIZER_FILE]))
    stage = TrainingStage.build(cfg, layout, frozen=json.loads(header.get("frozen", "[]")), tokenizer=tokenizer)
    missing = sorted(set(stage.ema.shadow) - set(tensors))
    extra = sorted(set(tensors) - set(stage.ema.shadow))
    if missing or extra:
        raise ValueError(f"{path}: does not match the model of its config: missing {missing}, unexpected {extra}")
    shapes = {name: tuple(p.shape) for name, p in stage.model.named_parameters()}
    wrong = [f"{k} {tuple(tensors[k].shape)} (model {shapes[k]})" for k in shapes if tuple(tensors[k].shape) != shapes[k]]
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} tensors do not have the shapes of its config's model: {', '.join(wrong)}")
    stage.assign(tensors)
    state = TrainState(step=int(header["step"]), consumed_samples=int(header["consumed_samples"]),
                       lineage=[{"imported": str(Path(path).resolve())}])
    return stage.save(Path(run_dir), state)


def verify(source: Path, result: Path, layout: Layout, overrides: list[str] = ()) -> float:
    """Raise unless source and result restore identical weights and EMA and equal outputs on a fixed
    batch in this layout; returns the largest output difference (0.0)."""
    a, _ = load_stage(source, layout, overrides)
    b, _ = load_stage(result, layout, overrides)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        if not torch.equal(p, q) or not torch.equal(a.ema.shadow[name], b.ema.shadow[name]):
            raise ValueError(f"{result}: {name} differs from {source}")
    difference = (stage_outputs(a) - stage_outputs(b)).abs().max()
    if dist.is_initialized():
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    if difference != 0:
        raise ValueError(f"{result}: outputs differ from {source}'s by {difference.item():.3e}")
    if layout.rank == 0:
        print(f"verified {result}: weights and EMA identical, outputs on a fixed batch equal", flush=True)
    return difference.item()
