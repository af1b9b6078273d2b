"""The mixer zoo: every mixer honours the contract, and each computes its paper's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from mixerlab.backbone import Block, BlockSpec
from mixerlab.build import CONF_DIR, build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.afno import AFNO
from mixers.contract import TokenLayout
from mixers.feedforward import FeatureAttention, TokenMLP
from mixers.fnet import FourierMixing
from mixers.metaformer import Pooling, RandomMixing
from mixers.spectral import GlobalFilter
from mixers.xca import XCA

MIXERS = [
    "attention",
    "feedforward",
    "spectral",
    "fibottention",
    "pooling",
    "identity",
    "random",
    "fnet",
    "afno",
    "xca",
    "tost",
    "ponet",
    "combiner",
]
CLS_GRID = TokenLayout(grid=(4, 4), num_prefix=1)
GRID = TokenLayout(grid=(4, 4), num_prefix=0)


def test_every_mixer_is_one_yaml():
    assert sorted(p.stem for p in (CONF_DIR / "mixer").glob("*.yaml")) == sorted(MIXERS)


@pytest.mark.parametrize("head", ["cls", "gap"])
@pytest.mark.parametrize(
    "overrides",
    [[f"mixer={m}"] for m in MIXERS] + [["mixer=fibottention", "mixer.variant=sparse"]],
    ids=MIXERS + ["fibottention_sparse"],
)
def test_every_mixer_trains_in_the_backbone_with_either_head(overrides, head):
    torch.manual_seed(0)
    model = build_backbone(compose_config([*overrides, f"backbone.head={head}"]))
    logits = model(torch.randn(3, 1, 16, 16))
    logits.logsumexp(-1).sum().backward()
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


@pytest.mark.parametrize(
    ("mixer", "key", "value"),
    [
        ("feedforward", "mixer.num_tokens", 17),
        ("random", "mixer.num_tokens", 17),
        ("spectral", "mixer.filter_size", "[4,4]"),
    ],
)
def test_fixed_token_mixers_reject_another_resolution_at_config_time(mixer, key, value):
    head = ["backbone.head=cls"] if key.endswith("num_tokens") else []  # 16 px: 4x4 patches + CLS = 17
    build_backbone(compose_config([f"mixer={mixer}", f"{key}={value}", *head]))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(compose_config([f"mixer={mixer}", f"{key}={value}", "data.img_size=32", *head]))


@pytest.mark.parametrize("mixer", ["attention", "xca", "fibottention"])
def test_multi_head_mixers_name_a_head_count_that_does_not_divide_the_width(mixer):
    with pytest.raises(ConfigError, match=r"embed_dim=64 is not divisible by mixer.num_heads=3: choose"):
        build_backbone(compose_config([f"mixer={mixer}", "mixer.num_heads=3"]))
    with pytest.raises(ConfigError, match=r"by backbone.num_heads=3: choose"):
        build_backbone(compose_config(["backbone.num_heads=3"]))


def test_block_without_mixer_norm_feeds_the_raw_stream_to_a_self_normalising_mixer():
    mixer = TokenMLP(8, CLS_GRID)
    block = Block(8, mixer, BlockSpec(order="mlp_first", mixer_norm=False))
    assert isinstance(block.norm1, torch.nn.Identity)
    assert mixer.norm.normalized_shape == (17,)  # LayerNorm over the tokens, CLS included
    x = torch.randn(2, 17, 8)
    expected = block._mlp(x)
    expected = expected + mixer(expected)  # the feature MLP runs first, then the token MLP
    torch.testing.assert_close(block(x), expected)


def test_token_mlp_is_shared_across_channels_and_mixes_tokens():
    torch.manual_seed(0)
    mixer = TokenMLP(6, CLS_GRID).eval()
    x = torch.randn(2, 17, 6)
    perm = torch.randperm(6)
    torch.testing.assert_close(mixer(x[..., perm]), mixer(x)[..., perm])
    y = x.clone()
    y[:, 3] += 1.0
    assert not torch.allclose(mixer(y)[:, 7], mixer(x)[:, 7])


def test_feature_attention_attends_over_channels():
    torch.manual_seed(0)
    mixer = FeatureAttention(6, CLS_GRID)
    x = torch.randn(2, 17, 6)
    perm = torch.randperm(6)  # channels are the sequence: permuting them permutes the output
    torch.testing.assert_close(mixer(x[..., perm]), mixer(x)[..., perm], atol=1e-5, rtol=1e-5)
    assert mixer.qkv.in_features == 17


def test_global_filter_is_the_gfnet_formula_and_leaves_cls_out():
    torch.manual_seed(0)
    mixer = GlobalFilter(8, CLS_GRID)
    assert mixer.complex_weight.shape == (4, 3, 8, 2)
    x = torch.randn(2, 17, 8)
    grid = x[:, 1:].reshape(2, 4, 4, 8)
    spectrum = torch.fft.rfft2(grid, dim=(1, 2), norm="ortho") * torch.view_as_complex(mixer.complex_weight)
    expected = torch.fft.irfft2(spectrum, s=(4, 4), dim=(1, 2), norm="ortho").reshape(2, 16, 8)
    out = mixer(x)
    torch.testing.assert_close(out[:, 1:], expected)
    torch.testing.assert_close(out[:, :1], x[:, :1])


def test_fft_mixers_run_in_float32_under_bf16_autocast():
    x = torch.randn(2, 16, 16)
    for mixer in (GlobalFilter(16, GRID), AFNO(16, GRID, num_blocks=4), FourierMixing(16, GRID)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mixer(x.bfloat16())
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_pooling_is_avgpool_minus_input_and_gives_cls_no_update():
    mixer = Pooling(8, CLS_GRID)
    x = torch.randn(2, 17, 8)
    grid = x[:, 1:].transpose(1, 2).reshape(2, 8, 4, 4)
    pooled = F.avg_pool2d(grid, 3, 1, 1, count_include_pad=False) - grid
    out = mixer(x)
    torch.testing.assert_close(out[:, 1:], pooled.flatten(2).transpose(1, 2))
    assert (out[:, 0] == 0).all()


def test_random_mixing_is_a_frozen_row_stochastic_matrix():
    mixer = RandomMixing(8, CLS_GRID)
    assert list(mixer.parameters()) == [] and "random_matrix" in mixer.state_dict()
    torch.testing.assert_close(mixer.random_matrix.sum(-1), torch.ones(17))
    x = torch.randn(2, 17, 8)
    torch.testing.assert_close(mixer(x), mixer.random_matrix @ x)


def test_fnet_is_the_real_part_of_a_2d_fft():
    x = torch.randn(2, 17, 8)
    torch.testing.assert_close(FourierMixing(8, CLS_GRID)(x), torch.fft.fft2(x).real, atol=1e-5, rtol=1e-5)


def test_afno_adds_its_input_back_and_splits_channels_into_blocks():
    mixer = AFNO(16, CLS_GRID, num_blocks=8)
    assert mixer.w1.shape == (2, 8, 2, 2) and mixer.b2.shape == (2, 8, 2)
    for p in mixer.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 17, 16)
    torch.testing.assert_close(mixer(x), x)  # zero spectral MLP: only the "+ x" remains
    with pytest.raises(ConfigError, match="mixer.num_blocks"):
        AFNO(12, GRID, num_blocks=8)


def test_xca_attention_is_channel_by_channel_and_token_permutation_equivariant():
    torch.manual_seed(0)
    mixer = XCA(8, CLS_GRID, num_heads=2)
    x = torch.randn(2, 17, 8)
    perm = torch.randperm(17)
    torch.testing.assert_close(mixer(x[:, perm]), mixer(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_xca_temperature_is_kept_out_of_weight_decay():
    model = build_backbone(compose_config(["mixer=xca"]))
    assert "blocks.0.mixer.temperature" in model.no_weight_decay()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    temperature = model.blocks[0].mixer.temperature
    group = next(g for g in optimizer.param_groups if any(p is temperature for p in g["params"]))
    assert group["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("mixer", "ffts"), [("spectral", {"_fft_r2c", "_fft_c2r"}), ("fnet", {"_fft_c2c"}),
                        ("afno", {"_fft_r2c", "_fft_c2r"})]
)
def test_fft_mixers_count_their_transforms_and_model_info_names_the_formulas(mixer, ffts):
    from mixerlab.costs import REGISTERED, flop_breakdown
    from scripts.model_info import model_info

    model = build_backbone(compose_config([f"mixer={mixer}"])).eval()
    _, per_op = flop_breakdown(model, torch.zeros(1, 1, 16, 16))
    assert all(per_op.get(op, 0) > 0 for op in ffts), per_op  # counted on any torch
    info = model_info([f"mixer={mixer}"])
    ours = ffts & set(REGISTERED)  # the ones this torch has no formula for
    assert set(info.get("flops_by_formula", {})) == ours
    assert all(op in info["flops_note"] for op in ours)
