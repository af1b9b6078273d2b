"""The Activator block option (backbone.block.mlp_type=activator, shared_norm) and its control preset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerlab.backbone import ActivatorGate, Block, BlockSpec, count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.attention import Attention
from mixers.contract import TokenLayout
from mixers.metaformer import IdentityMixer

C, D = 8, 16  # width, d_ffn


def test_gate_is_the_activator_formula_with_one_layernorm_on_both_branches():
    torch.manual_seed(0)
    gate = ActivatorGate(C, D)
    for p in gate.norm.parameters():  # a non-trivial affine, so a second LN module would show
        torch.nn.init.normal_(p)
    x = torch.randn(2, 5, C)
    ln = lambda t: F.layer_norm(t, (D,), gate.norm.weight, gate.norm.bias)  # noqa: E731
    u = ln(F.gelu(x @ gate.proj_u.weight.T + gate.proj_u.bias))
    v = ln(x @ gate.proj_v.weight.T + gate.proj_v.bias)
    assert torch.allclose(gate(x), (u * v) @ gate.proj_out.weight.T + gate.proj_out.bias, atol=1e-6)
    assert len([m for m in gate.modules() if isinstance(m, torch.nn.LayerNorm)]) == 1
    assert count_parameters(gate) == 3 * C * D + 4 * D + C


def test_activator_block_shares_one_norm_and_runs_gate_then_mlp():
    torch.manual_seed(0)
    spec = BlockSpec.from_config({"mixer": False, "mlp_type": "activator", "shared_norm": True}, "b")
    block = Block(C, IdentityMixer(C, TokenLayout((2, 2))), spec, mlp_ratio=D / C)
    assert block.norm_gate is block.norm2 and isinstance(block.norm1, torch.nn.Identity)
    x = torch.randn(2, 4, C)
    h = x + block.gate(block.norm2(x))  # no mixer sub-block: x + LN(x) would change this
    assert torch.allclose(block(x), h + block.mlp(block.norm2(h)), atol=1e-6)
    per_block = 2 * C + (3 * C * D + 4 * D + C) + (2 * C * D + D + C)  # one LN, gate, MLP
    assert count_parameters(block) == per_block


def test_control_preset_has_no_token_mixing_and_the_formula_parameter_count():
    cfg = compose_config(["experiment=activator_control"])
    model = build_backbone(cfg)
    c, d, depth = 64, 128, 4
    per_block = 2 * c + (3 * c * d + 4 * d + c) + (2 * c * d + d + c)
    embed = 16 * c + c + 16 * c  # patch conv (4x4, 1 channel) + bias + position embedding of 16 tokens
    assert count_parameters(model) == embed + depth * per_block + 2 * c + (c * 10 + 10)
    x = torch.randn(1, 1, 16, 16)
    y = model(x)
    x2 = x.clone()
    x2[..., :4, :4] = torch.randn(4, 4)  # one patch changes: no other token's features may move
    f1, f2 = model.forward_features(x), model.forward_features(x2)
    assert torch.equal(f1[:, 1:], f2[:, 1:]) and not torch.equal(f1[:, 0], f2[:, 0])
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_block_options_that_cannot_hold_are_named():
    with pytest.raises(ConfigError, match=r"mlp_type='glu' is not one of"):
        BlockSpec.from_config({"mlp_type": "glu"}, "backbone.block")
    with pytest.raises(ConfigError, match=r"mlp_type=activator is defined for style=prenorm only"):
        BlockSpec.from_config({"mlp_type": "activator", "style": "postnorm"}, "backbone.block")
    spec = BlockSpec.from_config({"mixer": False}, "backbone.block")
    with pytest.raises(ConfigError, match=r"block.mixer=false .* Attention has parameters"):
        Block(C, Attention(C, TokenLayout((2, 2)), num_heads=2), spec)
