"""Turn a stage-k checkpoint into the step-0 checkpoint of stage k+1 (rules: harness/growth/rules.py).

Runs in any launched world at the target layout: builds the target stage model (new levels
initialised by their seeded constructors: residual branches and the RGB exit start at zero, so the
grown model starts as the v = 0 predictor with the carried core untouched), accounts for every
parameter of both models (harness.growth.rules), and writes a complete checkpoint: weights, EMA, a
fresh optimizer over the parameters the next stage trains, the frozen set and the lineage.

The carried tensors are not written through the model: their stored bytes are copied from the
source checkpoint (whatever layout wrote it) into the grown one, named by both its weights and its
EMA (harness/checkpoint/splice.py), so growing costs a file copy of the core plus writing the new
levels, and the copy runs while the grown stage is built and written. They are read into memory
only when the next stage trains them (no frozen phase): its optimizer's main copies start from them.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing

from harness.checkpoint import io
from harness.checkpoint.sharded import model_sharded_state_dict, with_prefix
from harness.checkpoint.splice import Borrowed
from harness.checkpoint.stage import TrainingStage, bundled_tokenizer
from harness.checkpoint.state import TrainState, check_text_encoder
from harness.config import RunConfig
from harness.growth.rules import GrowthError, GrowthPlan, plan_growth, rule_for
from harness.parallel.layout import Layout, max_over_ranks


def _all_shapes(local: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Union over ranks of name -> global shape (pipeline stages hold different parameters)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(local)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return {k: v for part in everyone for k, v in part.items()}


def grow(source: str | Path, cfg: RunConfig, layout: Layout, *, weights: str = "ema") -> tuple[Path, GrowthPlan]:
    """Write the grown step-0 checkpoint into cfg.train.run_dir; `weights` picks the source family
    (`ema` or `model`) copied into the grown model's weights and EMA."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be ema or model, got {weights!r}")
    src = io.resolve(source)
    if problems := io.verify(src):                 # on every rank, before anything collective
        raise io.CheckpointError("; ".join(problems))
    src_meta = io.read_meta(src)
    src_arch = src_meta["config"]["model"]["arch"]
    source_shapes = {k.removeprefix("model."): s for k, s in io.stored_shapes(src).items() if k.startswith("model.")}

    # The next stage freezes what the rule carries (grow-frozen). Their bytes are copied into a
    # staging file while the stage is built; the plan, on the built model's shapes, then accounts for
    # every parameter of both models before anything is saved (a failure removes the staging file).
    # The core is carried whole, so its Megatron linears skip their random initialisation (1.5 s of
    # a 30 M-parameter core on a CPU core; minutes at billions).
    carried = rule_for(src_arch, cfg.model.arch).carried(source_shapes)
    borrowed = Borrowed(src, {f"{family}.{k}": f"{weights}.{k}" for k in carried for family in ("model", "ema")},
                        Path(cfg.train.run_dir))
    if layout.rank == 0:                           # the rank that splices: its copy runs while the stage builds
        borrowed.start()
    try:
        return _grow(src, src_meta, source_shapes, carried, borrowed, cfg, layout, weights)
    except BaseException:
        borrowed.discard()
        raise


def _grow(src: Path, src_meta: dict, source_shapes: dict, carried: list[str], borrowed: Borrowed, cfg: RunConfig,
          layout: Layout, weights: str) -> tuple[Path, GrowthPlan]:
    src_model = src_meta["config"]["model"]
    stage = TrainingStage.build(cfg, layout, frozen=carried if cfg.train.stage == "grow-frozen" else [],
                                tokenizer=bundled_tokenizer(src), initialize_core=False)
    check_text_encoder(src, src_meta, stage.text.identity)
    base = model_sharded_state_dict(stage.model)
    plan = plan_growth(source_shapes, _all_shapes({k: tuple(sh.global_shape) for k, sh in base.items()}),
                       src_model["arch"], cfg.model.arch, src_model["resolution_px"], cfg.model.resolution_px)

    if uninitialised := [n for n in plan.new if n.startswith("core.")]:
        raise GrowthError(f"the rule from {src_model['arch']} to {cfg.model.arch} leaves core parameters new "
                          f"({', '.join(uninitialised[:4])}); growing carries the whole core")

    # A trained carried parameter (no frozen phase) needs its value in the optimizer's main copy:
    # load the ones this rank holds, from the source family, into the EMA and copy them to the weights.
    kept = set(plan.carried)
    mine = {k: sh for k, sh in base.items() if k in kept}
    params = dict(stage.model.named_parameters())
    if max_over_ranks(float(any(k in params and params[k].requires_grad for k in mine))):
        loaded = dist_checkpointing.load(with_prefix(mine, f"{weights}.", stage.ema.shadow), str(src))
        stage.assign({name: loaded[f"{weights}.{name}"] for name in mine})

    lineage = src_meta.get("lineage", []) + [{
        "checkpoint": str(src.resolve()), "step": src_meta["step"], "stage": src_meta["stage"],
        "resolution_px": src_model["resolution_px"], "weights": weights,
        "carried": len(plan.carried), "dropped": list(plan.dropped), "new": len(plan.new)}]
    path = stage.save(Path(cfg.train.run_dir), TrainState(step=0, consumed_samples=0, lineage=lineage),
                      borrowed=borrowed)
    return path, plan
