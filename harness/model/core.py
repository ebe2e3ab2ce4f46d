"""The core: a deep stack of transformer layers on the 16x16 token grid, built from Megatron-core.

Each layer is self-attention, cross-attention to the caption and an MLP, modulated by the
conditioning vector (adaLN-single, as in PixArt-alpha: one shared projection of the condition,
plus a learned per-layer table). Its linears are Megatron Column/RowParallelLinear, so tensor
parallelism splits the attention heads and the MLP inside Megatron; nothing here knows the layout.

Layers live in a ModuleDict keyed by their global index, so parameter names (and checkpoint keys)
are the same whichever pipeline stage holds a layer. Sequence-first shapes, as Megatron uses:
hidden (N, B, H), context (L, B, H).

Two execution modes Megatron users expect, both as in Megatron's TransformerBlock:
- recomputation (`recompute`, set by harness.parallel.recompute): each layer is run through
  `tensor_parallel.checkpoint`, which keeps only its inputs and re-runs it in backward with the CPU,
  CUDA and TP random-number states restored;
- sequence parallelism (`config.sequence_parallel`): between the tensor-parallel linears the tokens
  and the caption are split over the TP ranks along the sequence (the column linears all-gather
  their input, the row linears reduce-scatter their output); the parameters and inputs used on a
  sequence slice - the cross-attention norm, the row-parallel biases, the adaLN table and the
  modulation - get their gradients summed over TP (Megatron's `sequence_parallel` parameter flag,
  reduced in finalize_model_grads; a copy-to-TP region for the modulation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import (
    CrossAttention,
    CrossAttentionSubmodules,
    SelfAttention,
    SelfAttentionSubmodules,
)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from harness.model.blocks import sincos_2d
from harness.model.init import seeded


class SDPAttention(MegatronModule):
    """Megatron core-attention slot filled by torch's scaled_dot_product_attention.

    Takes Megatron's per-partition heads: query (Sq, B, heads, d), key/value (Sk, B, heads, d);
    `attention_mask` (B, 1, 1, Sk) is True where a key is masked out (Megatron's convention).
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, softmax_scale: float | None = None, **_unused):
        super().__init__(config=config)
        self.dropout = config.attention_dropout
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))   # (B, heads, S, d)
        mask = None if attention_mask is None else ~attention_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale,
                                             dropout_p=self.dropout if self.training else 0.0)
        sq, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)               # (Sq, B, heads * d)


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """adaLN: LayerNorm without affine (eps 1e-6), then the per-sample scale and shift. x (N, B, H), scale/shift (B, H)."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def gated_residual(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x + gate * (out + bias): a Megatron linear's output and its separately returned bias, gated."""
    return x + gate * (out + bias)


class CoreLayer(MegatronModule):
    """adaLN-modulated self-attention, cross-attention (plain pre-norm) and MLP, with residuals.

    The elementwise work between Megatron's linears goes through `self.modulate` and
    `self.gated_residual` (pure tensor functions; train.compile swaps in compiled ones)."""

    def __init__(self, config: TransformerConfig, layer_number: int):
        super().__init__(config=config)
        h = config.hidden_size
        self.self_attn = SelfAttention(
            config, SelfAttentionSubmodules(linear_qkv=ColumnParallelLinear, core_attention=SDPAttention,
                                            linear_proj=RowParallelLinear),
            layer_number=layer_number, attn_mask_type=AttnMaskType.no_mask)
        self.norm_cross = nn.LayerNorm(h, eps=1e-6)
        self.cross_attn = CrossAttention(
            config, CrossAttentionSubmodules(linear_q=ColumnParallelLinear, linear_kv=ColumnParallelLinear,
                                             core_attention=SDPAttention, linear_proj=RowParallelLinear),
            layer_number=layer_number, attn_mask_type=AttnMaskType.padding)
        self.modulate, self.gated_residual = modulate, gated_residual
        self.mlp = MLP(config, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
                       ffn_hidden_size=config.ffn_hidden_size)
        self.ada_table = nn.Parameter(torch.randn(6, h) / h ** 0.5)
        for p in (self.ada_table, *self.norm_cross.parameters()):
            p.sequence_parallel = config.sequence_parallel        # used on a sequence slice: sum over TP

    def forward(self, x, mod, context, context_mask):
        """x (N, B, H), mod (B, 6, H), context (L, B, H), context_mask (B, 1, 1, L) True = masked."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.ada_table[None] + mod).unbind(1)  # (B, H)
        out, bias = self.self_attn(self.modulate(x, scale1, shift1), attention_mask=None)
        x = self.gated_residual(x, gate1, out, bias)
        out, bias = self.cross_attn(self.norm_cross(x), attention_mask=context_mask, key_value_states=context)
        x = x + out + bias
        out, bias = self.mlp(self.modulate(x, scale2, shift2))
        return self.gated_residual(x, gate2, out, bias)


def core_transformer_config(*, hidden: int, layers: int, heads: int, tp: int = 1, pp: int = 1,
                            dropout: float = 0.0, dtype: torch.dtype = torch.float32,
                            initialize: bool = True, sequence_parallel: bool = False) -> TransformerConfig:
    """The Megatron TransformerConfig of a core; weights initialise on the CPU, full then sliced,
    so a TP=N core starts as exact slices of the TP=1 core."""
    return TransformerConfig(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, ffn_hidden_size=4 * hidden,
        kv_channels=hidden // heads, hidden_dropout=dropout, attention_dropout=dropout,
        add_bias_linear=True, gated_linear_unit=False, activation_func=F.gelu,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, pipeline_dtype=dtype,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, use_cpu_initialization=True,
        perform_initialization=initialize, init_method_std=0.02, sequence_parallel=sequence_parallel and tp > 1)


class Core(MegatronModule):
    """Channels at the core grid -> tokens -> transformer layers -> channels at the core grid.

    `layer_ids` are the global indices of the layers this pipeline stage holds; `pre_process`
    builds the input projection and the modulation, `post_process` the output projection.
    Each part is initialised from (seed, its name), so a stage's weights equal the whole core's.
    """

    def __init__(self, config: TransformerConfig, channels: int, grid: int, layer_ids: range,
                 pre_process: bool = True, post_process: bool = True, seed: int = 0):
        super().__init__(config=config)
        h = config.hidden_size
        self.grid, self.channels = grid, channels
        self.recompute = False
        self.register_buffer("pos_emb", sincos_2d(grid, h), persistent=False)   # (N, H)
        self.layers = nn.ModuleDict({str(i): seeded(seed, f"core.layers.{i}", lambda i=i: CoreLayer(config, i + 1))
                                     for i in layer_ids})
        if pre_process:
            self.proj_in = seeded(seed, "core.proj_in", lambda: nn.Linear(channels, h))
            self.mod_proj = seeded(seed, "core.mod_proj", lambda: nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h)))
        if post_process:
            self.norm_out = nn.LayerNorm(h, eps=1e-6)
            self.proj_out = seeded(seed, "core.proj_out", lambda: nn.Linear(h, channels))

    def embed(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, g, g), cond (B, H) -> hidden (N, B, H), mod (B, 6, H)."""
        tokens = self.proj_in(x.flatten(2).transpose(1, 2)) + self.pos_emb.to(x.dtype)  # (B, N, H)
        mod = self.mod_proj(cond).unflatten(1, (6, -1))
        return tokens.transpose(0, 1).contiguous(), mod

    def run_layers(self, hidden, mod, context, context_valid):
        """Apply this stage's layers; hidden (N, B, H) whole on every TP rank, context (B, L, H),
        context_valid (B, L) bool; returns hidden (N, B, H) whole."""
        context_sbh = context.transpose(0, 1).contiguous()                 # (L, B, H)
        mask = ~context_valid[:, None, None, :]
        sp = self.config.sequence_parallel
        if sp:
            hidden = tensor_parallel.scatter_to_sequence_parallel_region(hidden)         # (N/tp, B, H)
            context_sbh = tensor_parallel.scatter_to_sequence_parallel_region(context_sbh)  # (L/tp, B, H)
            mod = tensor_parallel.copy_to_tensor_model_parallel_region(mod)
        for layer in self.layers.values():
            if self.recompute:
                hidden = tensor_parallel.checkpoint(layer, False, hidden, mod, context_sbh, mask)
            else:
                hidden = layer(hidden, mod, context_sbh, mask)
        if sp:
            # The gradient of the gathered tokens is the same on every TP rank (what follows is
            # replicated), so backward takes this rank's slice rather than summing.
            hidden = tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        return hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, B, H) -> (B, C, g, g)."""
        out = self.proj_out(self.norm_out(hidden)).transpose(0, 1)          # (B, N, C)
        return out.transpose(1, 2).unflatten(2, (self.grid, self.grid))
