"""The one stage assembly: model at the layout -> freeze -> DDP -> optimizer -> EMA -> load.

Training, growth, resharding, import and the benchmarks all build a stage here, so the model,
the optimizer's fp32 main copies and the EMA agree after any load:

- nothing loaded: the optimizer copied its main weights from the model when it was built;
- `restore` (a full training state): the optimizer state carries its own main copies (Megatron's
  `fully_reshardable` format stores them as `param`), which the model's bf16 weights round from;
- `load_weights` / `assign` (weights and EMA only: a new stage, a grown model, an imported release):
  the weights change after the optimizer exists, so its main copies are refreshed from the model
  with Megatron's `reload_model_params`, as Megatron-LM does after loading with `--no-load-optim`.
  Without that, a bf16 run's first step writes the stale main copies (the initialisation) back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.checkpoint import io
from harness.checkpoint import state as checkpointing
from harness.checkpoint.splice import Borrowed
from harness.checkpoint.state import TrainState
from harness.config import RunConfig
from harness.data.text import TextSource
from harness.data.tokenizer import TOKENIZER_FILE
from harness.model.ema import EMA
from harness.model.uvit import UViT
from harness.parallel.ddp import build_optimizer, override_learning_rates, wrap_ddp
from harness.parallel.layout import Layout, device
from harness.parallel.pipeline import build_stage


def freeze(model: torch.nn.Module, frozen: list[str]) -> None:
    """requires_grad = False for the parameters named in `frozen` (a full name, or a prefix ending in
    "." such as "core."), True for the others."""
    names = set(frozen)
    prefixes = tuple(f for f in frozen if f.endswith("."))
    for name, p in model.named_parameters():
        p.requires_grad_(not (name in names or name.startswith(prefixes)))


def bundled_tokenizer(ckpt: Path | None) -> Path | None:
    """The tokenizer a checkpoint carries (the one its text encoder learned with), if any."""
    path = Path(ckpt) / TOKENIZER_FILE if ckpt else None
    return path if path and path.is_file() else None


@dataclass
class TrainingStage:
    """A stage at this rank's layout: the model, its Megatron DDP and optimizer, schedule and EMA."""

    cfg: RunConfig
    layout: Layout
    text: TextSource | None
    model: UViT
    ddp: object
    optimizer: object
    scheduler: object
    ema: EMA
    frozen: list[str]          # as given to build, recorded in every checkpoint's meta.json

    @classmethod
    def build(cls, cfg: RunConfig, layout: Layout, *, frozen: list[str] = (), tokenizer: Path | None = None,
              vocab_size: int | None = None, initialize_core: bool = True) -> TrainingStage:
        """Assemble a fresh stage. The text source comes from `tokenizer` (else the data set's); a
        `vocab_size` instead builds without any text source (synthetic benchmarks). Without
        `initialize_core` the core's Megatron linears skip their random initialisation and its EMA
        is allocated, not copied, for a caller that overwrites them (growing)."""
        text = TextSource(cfg, tokenizer) if vocab_size is None else None
        model = build_stage(cfg, layout, vocab_size=text.vocab_size if text else vocab_size,
                            text_dim=text.text_dim if text else None, device=device(), initialize=initialize_core)
        freeze(model, list(frozen))
        ddp = wrap_ddp(model, cfg)
        optimizer, scheduler = build_optimizer(ddp, cfg)
        ema = EMA(model, cfg.optim.ema_decay, uninitialised=() if initialize_core else ("core.",))
        return cls(cfg, layout, text, model, ddp, optimizer, scheduler, ema, list(frozen))

    def restore(self, ckpt: Path) -> TrainState:
        """Load a complete training state: weights, EMA, optimizer (with its main copies), schedule.
        With optim.override_schedule the learning rates are this config's, not the checkpoint's."""
        state = checkpointing.restore(ckpt, self.model, self.ema, self.optimizer, self.scheduler,
                                      text_encoder=self._text_encoder(), prediction=self.cfg.diffusion.prediction)
        if self.cfg.optim.override_schedule:
            override_learning_rates(self.optimizer, self.scheduler, self.cfg)
        return state

    def load_weights(self, ckpt: Path) -> TrainState:
        """Start from another checkpoint's weights and EMA, with this stage's fresh optimizer and
        schedule; returns a step-0 state whose lineage ends with that checkpoint."""
        loaded = checkpointing.restore(ckpt, self.model, self.ema, self.optimizer, self.scheduler, with_optimizer=False,
                                       text_encoder=self._text_encoder(), prediction=self.cfg.diffusion.prediction)
        self._weights_changed()
        return TrainState(lineage=loaded.lineage + [{"checkpoint": str(Path(ckpt).resolve()), "step": loaded.step,
                                                      "stage": io.read_meta(ckpt)["stage"]}])

    @torch.no_grad()
    def assign(self, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None = None) -> None:
        """Overwrite the named parameters this rank holds (local shards) and their EMA (`ema`, else
        the same tensors); parameters not named keep their initialisation."""
        params = dict(self.model.named_parameters())
        for name, tensor in weights.items():
            params[name].copy_(tensor)
            self.ema.shadow[name].copy_((ema or weights)[name])
        self._weights_changed()

    def _weights_changed(self) -> None:
        """Refresh the optimizer's fp32 main copies from the model's (possibly bf16) weights."""
        self.optimizer.reload_model_params()

    def save(self, run_dir: Path, state: TrainState, protect: tuple[Path, ...] = (), background=None,
             borrowed: Borrowed | None = None) -> Path:
        """Collectively write this stage's complete training state as a checkpoint of `run_dir`
        (`protect`: checkpoints that pruning must keep; `background`: an AsyncCallsQueue; `borrowed`:
        weights and EMA copied as another checkpoint's bytes instead of from this stage)."""
        return checkpointing.save(run_dir, self.cfg, self.layout, state, self.model, self.ema, self.optimizer,
                                  self.scheduler, self.frozen, self.text.files() if self.text else {}, protect,
                                  background, self._text_encoder(), borrowed)

    def _text_encoder(self) -> dict | None:
        return self.text.identity if self.text else None
