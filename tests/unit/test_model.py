"""The models: every size builds, tiny ones run, names and initialisation do not depend on layout."""

import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from harness.config import ModelConfig
from harness.config.sizes import MODEL_SIZES
from harness.model.blocks import group_norm
from harness.model.conditioning import TextInput
from harness.model.core import SDPAttention, core_transformer_config
from harness.model.uvit import build_model


def _text(batch=2, length=16, vocab=50, drop=None):
    return TextInput(lengths=torch.tensor([3, length][:batch]), tokens=torch.randint(0, vocab, (batch, length)), drop=drop)


def _count(model, prefix=""):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_every_size_builds_on_meta(world, size):
    cfg = ModelConfig(size=size)
    with torch.device("meta"):
        model = build_model(cfg, vocab_size=1000, text_dim=None, seed=0, initialize=False)
    s = MODEL_SIZES[size]
    core_layers = _count(model, "core.layers.")
    # per layer: self- and cross-attention 4H^2 each, MLP 8H^2; biases 13H, adaLN table 6H, cross norm 2H
    assert core_layers == s.layers * (16 * s.hidden**2 + 21 * s.hidden)
    if size == "8b":
        assert 7.5e9 < _count(model) < 8.5e9


@pytest.mark.parametrize("arch, res", [("shallow", 64), ("grown", 128), ("grown", 64)])
def test_tiny_forward_backward(world, arch, res):
    model = build_model(ModelConfig(size="tiny", arch=arch, resolution_px=res), vocab_size=50, text_dim=None, seed=0)
    x = torch.randn(2, 3, res, res)
    v = model(x, torch.rand(2), _text(drop=torch.tensor([False, True])))
    assert v.shape == x.shape
    # the exit convolution starts at zero: the untrained model predicts v = 0 everywhere
    assert v.abs().max() == 0
    (v - torch.randn_like(v)).pow(2).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("head."))


def test_zero_init_false_starts_new_blocks_and_the_exit_at_pytorch_defaults(world):
    """model.zero_init=false (the growth ablation of tools/claims.py): the same weights, except the
    residual branches and the RGB exit, which are not zero, so the untrained model predicts v != 0."""
    zero = build_model(ModelConfig(size="tiny", arch="grown", resolution_px=64), vocab_size=50, text_dim=None, seed=0)
    default = build_model(ModelConfig(size="tiny", arch="grown", resolution_px=64, zero_init=False), vocab_size=50,
                          text_dim=None, seed=0)
    differ = {n for (n, a), (_, b) in zip(zero.named_parameters(), default.named_parameters()) if not torch.equal(a, b)}
    assert differ and all(n.endswith(("conv2.weight", "conv2.bias")) or n.startswith("head.") for n in differ)
    assert all(n in differ for n, p in zero.named_parameters() if n.endswith("conv2.weight"))
    x = torch.randn(2, 3, 64, 64)
    assert default(x, torch.rand(2), _text(drop=torch.tensor([False, True]))).abs().max() > 0


def test_precomputed_text_embeddings(world):
    model = build_model(ModelConfig(size="tiny", text_encoder="precomputed"), vocab_size=None, text_dim=12, seed=0)
    text = TextInput(lengths=torch.tensor([2, 5]), emb=torch.randn(2, 5, 12, dtype=torch.float16))
    assert model(torch.randn(2, 3, 64, 64), torch.rand(2), text).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="needs the data set's text_embedding dim"):
        build_model(ModelConfig(size="tiny", text_encoder="precomputed"), vocab_size=None, text_dim=None, seed=0)


def test_core_names_and_shapes_do_not_depend_on_the_levels(world):
    shallow = build_model(ModelConfig(size="tiny"), vocab_size=50, text_dim=None, seed=0)
    grown = build_model(ModelConfig(size="tiny", arch="grown", resolution_px=256), vocab_size=50, text_dim=None, seed=0)
    carried = lambda m: {k: v.shape for k, v in m.named_parameters() if k.startswith(("core.", "cond."))}  # noqa: E731
    assert carried(shallow) == carried(grown)


def test_initialisation_is_a_function_of_seed_and_name(world):
    """A pipeline stage holding layers 1.. of the core starts with the same weights as the whole model."""
    cfg = ModelConfig(size="tiny")
    whole = build_model(cfg, vocab_size=50, text_dim=None, seed=3)
    last_stage = build_model(cfg, vocab_size=50, text_dim=None, seed=3, layer_ids=range(1, 2), pre_process=False)
    whole_sd = whole.state_dict()
    stage_sd = last_stage.state_dict()
    assert set(stage_sd) < set(whole_sd) and not any(k.startswith(("stem", "enc", "cond")) for k in stage_sd)
    for key, value in stage_sd.items():
        if value is not None:
            torch.testing.assert_close(value, whole_sd[key], rtol=0, atol=0, msg=key)
    other_seed = build_model(cfg, vocab_size=50, text_dim=None, seed=4)
    assert not torch.equal(other_seed.state_dict()["core.layers.0.mlp.linear_fc1.weight"],
                           whole_sd["core.layers.0.mlp.linear_fc1.weight"])


@pytest.mark.parametrize("mask_type", [AttnMaskType.no_mask, AttnMaskType.padding])
def test_sdpa_slot_matches_megatron_dot_product_attention(world, mask_type):
    config = core_transformer_config(hidden=32, layers=1, heads=4)
    attn = {}
    for name, core in (("sdpa", SDPAttention), ("megatron", DotProductAttention)):
        torch.manual_seed(0)
        attn[name] = SelfAttention(config, SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear, core_attention=core, linear_proj=RowParallelLinear),
            layer_number=1, attn_mask_type=mask_type)
    x = torch.randn(10, 3, 32)                                  # (S, B, H)
    mask = None
    if mask_type == AttnMaskType.padding:
        mask = (torch.arange(10)[None, :] >= torch.tensor([4, 10, 7])[:, None])[:, None, None, :]
    out_sdpa, _ = attn["sdpa"](x, attention_mask=mask)
    out_ref, _ = attn["megatron"](x, attention_mask=mask)
    torch.testing.assert_close(out_sdpa, out_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [8, 16, 24, 32, 48, 64, 96, 128, 256, 384, 512])
def test_group_norm_groups_hold_at_least_four_channels(channels):
    """No level normalises each channel on its own (instance norm): a group holds >= 4 channels,
    and 32 groups are used from 128 channels up (the grown levels have 32 and 64 channels)."""
    groups = group_norm(channels).num_groups
    assert channels % groups == 0 and channels // groups >= 4 and groups <= 32
    assert groups == 32 or channels < 128


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_group_norm_on_channels_last_maps_matches_torch_and_keeps_the_layout(dtype):
    """The levels' GroupNorm (bf16 CPU maps normalised channels-first, for speed) computes what
    nn.GroupNorm computes, gradients included, and hands back a channels-last map."""
    torch.manual_seed(0)
    ours = group_norm(32).to(dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p))
    ref = torch.nn.GroupNorm(ours.num_groups, 32, eps=1e-6).to(dtype)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 32, 16, 16).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    outs = []
    for module in (ours, ref):
        xi = x.detach().clone().requires_grad_()
        y = module(xi)
        y.backward(grad)
        outs.append((y, xi.grad, module.weight.grad, module.bias.grad))
    assert outs[0][0].is_contiguous(memory_format=torch.channels_last)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a.float(), b.float(), **tol)
