"""The two models of greedy growing, written once for every parallel layout.

- ShallowUViT (core pre-training): patchify entry convolution straight to the core
  grid, one ResBlock as encoder, the core, one ResBlock as decoder over [core output, long skip],
  unpatchify exit convolution.
- GrownUViT (growth stages): a convolutional UNet from the target resolution down to the core
  grid (ResBlock levels with 2x down-sampling), the same core, a mirrored decoder with UNet skips.

Both share `cond.*` (text and time conditioning) and `core.*`: growth carries exactly those
(harness/growth/rules.py).
The forward pass is split into embed -> run_layers -> finish so that a pipeline stage runs only
its part; `StageState` is what flows between the parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from torch import nn

from harness.config import ModelConfig
from harness.config.sizes import MODEL_SIZES, default_level_channels
from harness.model.blocks import Downsample, ResBlock, Upsample, group_norm, zero_
from harness.model.conditioning import Conditioning, TextEncoder, TextInput
from harness.model.core import Core, core_transformer_config
from harness.model.init import seeded


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) stored channels-last: the convolutions of the levels then stay in that layout,
    which oneDNN and cuDNN run fastest (bf16 convolutions 10x faster on an AVX2 CPU); on a CPU the
    bf16 GroupNorms normalise channels-first and hand back channels-last (blocks.GroupNorm)."""
    return x.contiguous(memory_format=torch.channels_last)

@dataclass
class StageState:
    """Activations that cross a pipeline-stage boundary (shapes for batch B, caption length L)."""

    hidden: torch.Tensor          # (N, B, H) core tokens
    mod: torch.Tensor             # (B, 6, H) adaLN modulation
    context: torch.Tensor         # (B, L, H) caption states for cross-attention
    context_valid: torch.Tensor   # (B, L) bool
    cond: torch.Tensor            # (B, H) conditioning vector of the ResBlocks
    skips: list[torch.Tensor]     # encoder activations the decoder consumes, in encoder order


class UViT(MegatronModule):
    """Common skeleton: conditioning and core; subclasses add the convolutional levels."""

    def __init__(self, cfg: ModelConfig, *, vocab_size: int | None, text_dim: int | None, seed: int,
                 tp: int = 1, pp: int = 1, layer_ids: range | None = None, pre_process: bool = True,
                 post_process: bool = True, dtype: torch.dtype = torch.float32, initialize: bool = True,
                 sequence_parallel: bool = False):
        size = MODEL_SIZES[cfg.size]
        config = core_transformer_config(hidden=size.hidden, layers=size.layers, heads=size.heads, tp=tp, pp=pp,
                                         dropout=cfg.dropout, dtype=dtype, initialize=initialize,
                                         sequence_parallel=sequence_parallel)
        super().__init__(config=config)
        # What Megatron's schedules and finalize_model_grads ask of a model: no tied embeddings here.
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False
        self.cfg, self.size, self.seed = cfg, size, seed
        self.pre_process, self.post_process = pre_process, post_process
        self.input_tensor = None
        self.recompute_min_px: int | None = None      # ResBlocks at this side or larger re-run in backward
        layer_ids = range(size.layers) if layer_ids is None else layer_ids
        if pre_process:
            if cfg.text_encoder == "learned":
                if not vocab_size:
                    raise ValueError("model.text_encoder=learned needs the tokenizer's vocab_size")
                text = seeded(seed, "cond.text", lambda: TextEncoder(
                    vocab_size, size.text_width, size.text_layers, size.text_heads, cfg.text_max_len))
                text_dim = size.text_width
            elif not text_dim:
                raise ValueError("model.text_encoder=precomputed needs the data set's text_embedding dim")
            else:
                text = None
            self.cond = seeded(seed, "cond", lambda: Conditioning(size.hidden, text_dim, text))
        self.core = Core(config, size.channels, cfg.core_grid, layer_ids, pre_process, post_process, seed=seed)
        self.build_levels()

    def set_input_tensor(self, input_tensor) -> None:
        """Megatron's pipeline schedule hands a non-first stage its input here (a list of one)."""
        self.input_tensor = input_tensor[0] if isinstance(input_tensor, (list, tuple)) else input_tensor

    # Subclasses: build_levels(), encode(), decode(), skip_shapes().
    def build_levels(self) -> None:
        raise NotImplementedError

    def embed(self, x_t: torch.Tensor, t: torch.Tensor, text: TextInput) -> StageState:
        """First stage: noisy images (B, 3, R, R), times (B,), captions -> state before the core layers."""
        cond, context, valid = self.cond(t, text)
        h, skips = self.encode(channels_last(x_t.to(cond.dtype)), cond)
        hidden, mod = self.core.embed(h, cond)
        return StageState(hidden, mod, context, valid, cond, skips)

    def run_layers(self, s: StageState) -> StageState:
        """Any stage: apply the core layers this stage holds."""
        s.hidden = self.core.run_layers(s.hidden, s.mod, s.context, s.context_valid)
        return s

    def finish(self, s: StageState) -> torch.Tensor:
        """Last stage: state -> predicted v (B, 3, R, R)."""
        return self.decode(channels_last(self.core.head(s.hidden)), s.skips, s.cond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: TextInput) -> torch.Tensor:
        """The whole model on one pipeline stage: (B, 3, R, R) noisy images -> (B, 3, R, R) v."""
        return self.finish(self.run_layers(self.embed(x_t, t, text)))

    def _seeded(self, name: str, build):
        return seeded(self.seed, name, build)

    def _exit(self, conv: nn.Conv2d) -> nn.Conv2d:
        """The RGB exit convolution: zero (model.zero_init) or as PyTorch initialises it."""
        return zero_(conv) if self.cfg.zero_init else conv

    def _block(self, block: ResBlock, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """A ResBlock, recomputed in backward when it works at recompute_min_px or more (it keeps
        only its inputs; torch's non-reentrant checkpoint restores the RNG state for dropout)."""
        if self.recompute_min_px is not None and h.shape[-1] >= self.recompute_min_px and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, cond, use_reentrant=False)
        return block(h, cond)


class ShallowUViT(UViT):
    """Core pre-training model: the image reaches the core grid in one patchify convolution."""

    def build_levels(self) -> None:
        c, h, p = self.size.channels, self.size.hidden, self.patch
        if self.pre_process:
            self.stem = self._seeded("stem", lambda: nn.Conv2d(3, c, p, stride=p))
            self.enc = self._seeded("enc", lambda: ResBlock(c, c, h, self.cfg.dropout, self.cfg.zero_init))
        if self.post_process:
            self.dec = self._seeded("dec", lambda: ResBlock(2 * c, c, h, self.cfg.dropout, self.cfg.zero_init))
            # Linear in the normalised features (as DiT's final layer): each output pixel of a patch
            # is read from the patch's channels; a SiLU here would discard their negative half,
            # which a 4x4x3 patch in 128 channels cannot spare (250-step loss 0.23 vs 0.44 with it).
            self.head = self._seeded("head", lambda: nn.Sequential(group_norm(c), self._exit(nn.Conv2d(c, 3 * p * p, 1))))

    @property
    def patch(self) -> int:
        return self.cfg.resolution_px // self.cfg.core_grid

    def skip_shapes(self) -> list[tuple[int, int]]:
        """(channels, side) of each skip tensor."""
        return [(self.size.channels, self.cfg.core_grid)]

    def encode(self, x, cond):
        h = self._block(self.enc, self.stem(x), cond)     # (B, C, g, g)
        return h, [h]

    def decode(self, h, skips, cond):
        h = self._block(self.dec, torch.cat([h, skips[0]], dim=1), cond)
        return F.pixel_shuffle(self.head(h), self.patch)  # (B, 3, R, R)


class GrownUViT(UViT):
    """Growth-stage model: ResBlock levels from the target resolution down to the core grid and back.

    Level i (0 = next to the core) works at side core_grid * 2^(i+1) with `level_channels[i]`
    channels, so growing to a higher resolution adds level n and keeps every name of levels 0..n-1;
    only the RGB entry (`stem`) and exit (`head`) convolutions are replaced.
    """

    def build_levels(self) -> None:
        cfg, size = self.cfg, self.size
        ch, c, h, n, bpl = self.level_channels, size.channels, size.hidden, self.levels, cfg.blocks_per_level
        inner = [c] + ch[:-1]                             # channels on the core side of each level
        if self.pre_process:
            self.stem = self._seeded("stem", lambda: nn.Conv2d(3, ch[-1], 3, padding=1))
            self.enc = nn.ModuleList(self._seeded(f"enc.{i}", lambda i=i: nn.ModuleList(
                ResBlock(ch[i], ch[i], h, cfg.dropout, cfg.zero_init) for _ in range(bpl))) for i in range(n))
            self.down = nn.ModuleList(self._seeded(f"down.{i}", lambda i=i: Downsample(ch[i], inner[i]))
                                      for i in range(n))
        if self.post_process:
            self.mid = self._seeded("mid", lambda: ResBlock(2 * c, c, h, cfg.dropout, cfg.zero_init))
            self.up = nn.ModuleList(self._seeded(f"up.{i}", lambda i=i: Upsample(inner[i], ch[i])) for i in range(n))
            self.dec = nn.ModuleList(self._seeded(f"dec.{i}", lambda i=i: nn.ModuleList(
                ResBlock(2 * ch[i], ch[i], h, cfg.dropout, cfg.zero_init) for _ in range(bpl + 1))) for i in range(n))
            self.head = self._seeded("head", lambda: nn.Sequential(
                group_norm(ch[-1]), nn.SiLU(), self._exit(nn.Conv2d(ch[-1], 3, 3, padding=1))))

    @property
    def levels(self) -> int:
        return (self.cfg.resolution_px // self.cfg.core_grid).bit_length() - 1

    @property
    def level_channels(self) -> list[int]:
        """Channels per level, innermost first."""
        return list(self.cfg.level_channels) or default_level_channels(self.size, self.levels)

    def skip_shapes(self) -> list[tuple[int, int]]:
        """(channels, side) of each skip tensor in encoder order: bpl+1 per level from the outermost
        inwards, then the core input."""
        shapes = []
        for i in reversed(range(self.levels)):
            shapes += [(self.level_channels[i], self.cfg.core_grid << (i + 1))] * (self.cfg.blocks_per_level + 1)
        return shapes + [(self.size.channels, self.cfg.core_grid)]

    def encode(self, x, cond):
        h = self.stem(x)
        skips = []
        for i in reversed(range(self.levels)):
            skips.append(h)
            for block in self.enc[i]:
                h = self._block(block, h, cond)
                skips.append(h)
            h = self.down[i](h)
        skips.append(h)                                   # long skip around the core
        return h, skips

    def decode(self, h, skips, cond):
        skips = list(skips)
        h = self._block(self.mid, torch.cat([h, skips.pop()], dim=1), cond)
        for i in range(self.levels):
            h = self.up[i](h)
            for block in self.dec[i]:
                h = self._block(block, torch.cat([h, skips.pop()], dim=1), cond)
        return self.head(h)


def build_model(cfg: ModelConfig, **kwargs) -> UViT:
    """Build the model of `cfg.arch` (see UViT for the keyword arguments)."""
    cls = ShallowUViT if cfg.arch == "shallow" else GrownUViT
    return cls(cfg, **kwargs)
