"""What a model's shapes cost per micro-batch: activation elements saved for backward and forward
FLOPs, per core layer and for the parts outside the core (harness/parallel/plan.py turns them into
memory and time per rank). Pure functions of sizes, unit-tested against real models
(tests/unit/test_plan.py).

Activation recomputation and sequence parallelism change what is saved, as in Megatron-LM:
- `recompute` = core: each core layer keeps only its input (Megatron's full recomputation at
  granularity one layer); its activations are rebuilt in backward, one layer at a time.
  `full`: also each ResBlock at or above `recompute_min_px` keeps only its input.
- `sequence_parallel`: the per-token tensors outside the tensor-parallel linears (norm inputs and
  outputs, the modulated and gated branches, the layer input) are split over the TP ranks too, so
  every saved core tensor is divided by TP (Korthikanti et al. 2022, as Megatron implements it).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.config import ModelConfig
from harness.config.sizes import MODEL_SIZES, default_level_channels
from harness.parallel.pipeline import PackSpec


@dataclass(frozen=True)
class Shape:
    """The sizes that activations, FLOPs and the packed pipeline state depend on."""

    hidden: int
    heads: int
    layers: int
    channels: int
    grid: int
    text_len: int
    text_width: int
    text_layers: int
    resolution_px: int
    arch: str
    level_channels: tuple[int, ...]
    blocks_per_level: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> Shape:
        """The Shape of a model config (sizes from harness.config.sizes)."""
        s = MODEL_SIZES[cfg.size]
        levels = (cfg.resolution_px // cfg.core_grid).bit_length() - 1
        chans = tuple(cfg.level_channels or default_level_channels(s, levels)) if cfg.arch == "grown" else ()
        return cls(s.hidden, s.heads, s.layers, s.channels, cfg.core_grid, cfg.text_max_len, s.text_width,
                   s.text_layers, cfg.resolution_px, cfg.arch, chans, cfg.blocks_per_level)

    def levels(self) -> list[tuple[int, int, int]]:
        """Grown model: (channels, side, channels on the core side) of each level, innermost first
        (level i works at core_grid * 2^(i+1), as harness.model.uvit.GrownUViT)."""
        inner = [self.channels] + list(self.level_channels[:-1])
        return [(c, self.grid << (i + 1), inner[i]) for i, c in enumerate(self.level_channels)]

    def pack_spec(self) -> PackSpec:
        """The packed state that pipeline stages exchange (harness.parallel.pipeline)."""
        if self.arch == "shallow":
            skips = [(self.channels, self.grid)]
        else:
            skips = [(c, side) for c, side, _ in reversed(self.levels()) for _ in range(self.blocks_per_level + 1)]
            skips.append((self.channels, self.grid))
        return PackSpec(self.hidden, self.grid ** 2, self.text_len, tuple(skips))


def layer_activation_elems(sh: Shape, b: int, tp: int, *, sequence_parallel: bool = False,
                           recomputed: bool = False) -> tuple[int, int]:
    """(elements in the compute dtype, fp32 elements) one core layer saves for backward.

    Recomputed: only the layer's input (s b h, / tp with sequence parallelism). Sequence parallel:
    the 10h per token below are split over TP as well, and so are the norms' fp32 statistics.

    Per token (s = grid^2 tokens, h = hidden): 10h unsharded (inputs of the 3 norms, the 2 modulated
    norm outputs, the inputs of linear_qkv / linear_q / linear_fc1, the 2 gated branches) and 14h/tp
    sharded (qkv 3h, self-attention output h, cross-attention q h and output h, GELU input 4h, fc2
    input 4h; the output projections take views of the attention outputs, which SDPA returns
    sequence-major); per caption token the cross-attention k, v 2h/tp; fp32: mean and rstd of the
    3 norms per token, and the two attentions' log-sum-exp per head and query."""
    s, h, L = sh.grid ** 2, sh.hidden, sh.text_len
    split = tp if sequence_parallel else 1
    if recomputed:
        return s * b * h // split, 0
    act = s * b * h * 10 // split + s * b * h * 14 // tp + 2 * L * b * h // tp
    fp32 = 6 * s * b // split + 2 * b * (sh.heads // tp) * s
    return act, fp32


def resblock_activation_elems(c_in: int, c_out: int, side: int, b: int, recompute_min_px: int = 0) -> int:
    """Elements a ResBlock saves: 3 c_in (norm1 input, SiLU input, conv1 input) + 4 c_out (norm2 input,
    modulated norm2 output, SiLU input, conv2 input) per pixel; the skip conv reuses the block input.
    Only its input (c_in per pixel) when it is recomputed (0 < recompute_min_px <= side)."""
    if 0 < recompute_min_px <= side:
        return c_in * side * side * b
    return (3 * c_in + 4 * c_out) * side * side * b


def ends_activation_elems(sh: Shape, b: int, recompute_min_px: int = 0) -> tuple[int, int]:
    """(first-stage extras, last-stage extras) activation elements outside the core layers: the
    conditioning (time MLP, text encoder, context projection), stem, encoder and core input on the
    first stage; core output, decoder and head on the last. The loss's fp32 error is added by callers.
    ResBlocks at or above recompute_min_px (> 0: parallel.recompute=full) keep only their input."""
    h, g, c, L, w, R = sh.hidden, sh.grid, sh.channels, sh.text_len, sh.text_width, sh.resolution_px
    m = recompute_min_px
    # text transformer layer: 2 norms in/out, qkv 3w, attention out w, proj in w, MLP 4w + 4w, probs
    cond = 2 * b * 256 + 2 * b * h + sh.text_layers * b * L * (16 * w + 2 * L) + b * L * w + 2 * b * h
    first = cond + 3 * R * R * b + c * g * g * b                         # stem input, core proj_in input
    last = 2 * g * g * b * h                                             # norm_out, proj_out inputs
    if sh.arch == "shallow":
        first += resblock_activation_elems(c, c, g, b, m)
        last += resblock_activation_elems(2 * c, c, g, b, m) + 3 * c * g * g * b   # dec, head (norm, SiLU, conv)
    else:
        for ch, side, inner in sh.levels():
            first += sh.blocks_per_level * resblock_activation_elems(ch, ch, side, b, m) + ch * side * side * b
            last += inner * side * side * b                              # up-sampling conv input
            last += (sh.blocks_per_level + 1) * resblock_activation_elems(2 * ch, ch, side, b, m)
        last += resblock_activation_elems(2 * c, c, g, b, m) + 3 * sh.level_channels[-1] * R * R * b  # mid, head
    return first, last


def _resblock_flops(c_in: int, c_out: int, side: int, b: int) -> int:
    return 2 * b * side * side * (9 * c_in * c_out + 9 * c_out * c_out + (c_in * c_out if c_in != c_out else 0))


def layer_flops(sh: Shape, b: int) -> int:
    """Forward FLOPs of one core layer (all TP ranks together): 28 s h^2 of linears, 4 L h^2 for
    the caption k/v, 4 s^2 h self-attention, 4 s L h cross-attention."""
    s, h, L = sh.grid ** 2, sh.hidden, sh.text_len
    return b * (28 * s * h * h + 4 * L * h * h + 4 * s * s * h + 4 * s * L * h)


def ends_flops(sh: Shape, b: int) -> tuple[int, int]:
    """Forward FLOPs of the first-stage and last-stage extras (conditioning, convolutions, core in/out)."""
    h, g, c, L, w, R = sh.hidden, sh.grid, sh.channels, sh.text_len, sh.text_width, sh.resolution_px
    cond = 2 * b * (256 * h + h * h + 2 * w * h + 6 * h * h) + 2 * b * L * w * h
    cond += sh.text_layers * 2 * b * L * (12 * w * w + 2 * L * w)
    first = cond + 2 * b * g * g * c * h
    last = 2 * b * g * g * h * c
    if sh.arch == "shallow":
        p = R // g
        first += 2 * b * g * g * 3 * p * p * c + _resblock_flops(c, c, g, b)
        last += _resblock_flops(2 * c, c, g, b) + 2 * b * g * g * c * 3 * p * p
    else:
        ch0 = sh.level_channels[-1]                                      # the outermost level's
        first += 2 * b * R * R * 27 * ch0
        for ch, side, inner in sh.levels():
            first += sh.blocks_per_level * _resblock_flops(ch, ch, side, b) + 2 * b * (side // 2) ** 2 * 9 * ch * inner
            last += 2 * b * side * side * 9 * inner * ch                       # up-sampling conv
            last += (sh.blocks_per_level + 1) * _resblock_flops(2 * ch, ch, side, b)
        last += _resblock_flops(2 * c, c, g, b) + 2 * b * R * R * 27 * ch0
    return first, last


def workspace_bytes(sh: Shape, b: int, tp: int, act_b: int, last: bool) -> float:
    """Transient memory at the start of backward, beyond the saved activations: the loss's four fp32
    image-sized tensors (prediction, target, error, its gradient) on the last stage, or the gradients
    of the largest saved tensor's op (its output's and its input's), whichever is larger."""
    loss = 4 * 3 * sh.resolution_px ** 2 * b * 4 if last else 0
    largest = 4 * sh.grid ** 2 * b * sh.hidden // tp                  # the MLP's hidden activation
    for ch, side, _ in sh.levels() if sh.arch == "grown" else []:
        largest = max(largest, 2 * ch * side * side * b)                # a decoder block's concatenated input
    return max(loss, 2 * largest * act_b)


def recompute_bytes(sh: Shape, b: int, tp: int, act_b: int, *, core: bool, recompute_min_px: int,
                    sequence_parallel: bool) -> float:
    """Transient memory in backward under recomputation: the activations of the one core layer (or
    the largest recomputed ResBlock) rebuilt at a time, as if not recomputed."""
    rebuilt = 0.0
    if core:
        act, fp32 = layer_activation_elems(sh, b, tp, sequence_parallel=sequence_parallel)
        rebuilt = act * act_b + fp32 * 4
    for ch, side, _ in sh.levels() if sh.arch == "grown" and recompute_min_px > 0 else []:
        if side >= recompute_min_px:
            rebuilt = max(rebuilt, resblock_activation_elems(2 * ch, ch, side, b) * act_b)
    return rebuilt
