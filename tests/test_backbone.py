"""The backbone: shapes for both heads, DeiT parameter counts, block options and the mixer schedule."""

from __future__ import annotations

import pytest
import torch

from mixerlab.backbone import Block, BlockSpec
from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import count_flops, count_parameters
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout
from tests.conftest import tiny_vit

IMAGENET = ["data.img_size=224", "data.num_classes=1000", "data.in_chans=3"]


@pytest.mark.parametrize("head, tokens", [("cls", 17), ("gap", 16)])
def test_both_heads_give_logits_and_the_right_token_layout(head, tokens):
    model = tiny_vit(head=head)
    assert model.layout.num_tokens == tokens
    assert model.layout == TokenLayout(grid=(4, 4), num_prefix=1 if head == "cls" else 0)
    assert model.forward_features(torch.randn(3, 1, 16, 16)).shape == (3, tokens, 32)
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)
    assert (model.cls_token is None) == (head == "gap")


@pytest.mark.parametrize("backbone, params", [("vit_tiny", 5_717_416), ("vit_small", 22_050_664)])
def test_deit_presets_have_the_reference_parameter_count(backbone, params):
    model = build_backbone(compose_config([f"backbone={backbone}", *IMAGENET]))
    assert count_parameters(model) == params


def test_deit_tiny_flops_match_the_reference_within_3_percent():
    model = build_backbone(compose_config(["backbone=vit_tiny", *IMAGENET]))
    flops = count_flops(model, 224, 3)["flops"]
    assert abs(flops / (2 * 1.26e9) - 1) < 0.03


def test_wrong_input_size_names_the_config_key():
    model = tiny_vit(depth=1)
    with pytest.raises(ValueError, match="data.img_size"):
        model(torch.randn(1, 1, 32, 32))


def test_mlp_false_drops_the_feature_mlp():
    full = tiny_vit()
    attn_only = tiny_vit(block={"mlp": False})
    mlp_params = 2 * (32 * 128 + 128 + 128 * 32 + 32 + 2 * 32)  # fc1, fc2 and norm2 per layer
    assert count_parameters(full) - count_parameters(attn_only) == mlp_params
    assert attn_only(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_schedule_puts_a_different_mixer_and_block_in_the_first_layers():
    marker = lambda **kw: torch.nn.Identity()  # noqa: E731
    first_three = {"layers": 3, "mixer": marker, "block": {"style": "single_residual"}}
    model = tiny_vit(depth=4, schedule=[first_three])
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    styles = [b.spec.style for b in model.blocks]
    assert kinds == ["Identity"] * 3 + ["Attention"]
    assert styles == ["single_residual"] * 3 + ["prenorm"]


def test_drop_path_rises_linearly_over_depth():
    model = tiny_vit(depth=5, drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


@pytest.mark.parametrize("style", ["prenorm", "single_residual", "postnorm"])
def test_block_styles_compute_their_formulas(style):
    torch.manual_seed(0)
    dim = 8
    mixer = torch.nn.Linear(dim, dim)
    block = Block(dim, mixer, BlockSpec(style=style)).eval()
    x = torch.randn(2, 5, dim)
    n1, n2, mlp = block.norm1, block.norm2, block.mlp
    expected = {
        "prenorm": (lambda y: y + mlp(n2(y)))(x + mixer(n1(x))),
        "single_residual": x + mlp(n2(mixer(n1(x)))),
        "postnorm": (lambda y: n2(y + mlp(y)))(n1(x + mixer(x))),
    }[style]
    torch.testing.assert_close(block(x), expected)


def test_mlp_first_order_runs_the_feature_mlp_before_the_mixer():
    dim = 8
    mixer = torch.nn.Linear(dim, dim)
    block = Block(dim, mixer, BlockSpec(order="mlp_first")).eval()
    x = torch.randn(2, 5, dim)
    y = x + block.mlp(block.norm2(x))
    torch.testing.assert_close(block(x), y + mixer(block.norm1(y)))


def test_unknown_block_option_is_named():
    with pytest.raises(ConfigError, match=r"backbone.block.stlye"):
        BlockSpec.from_config({"stlye": "prenorm"}, "backbone.block")
    with pytest.raises(ConfigError, match=r"backbone.block.style='pre'"):
        BlockSpec.from_config({"style": "pre"}, "backbone.block")
