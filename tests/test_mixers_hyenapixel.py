"""HyenaPixel (mixers/hyenapixel.py): the centred FFT convolution is a direct O(N²) sum, the operator is its
equation, the official parameter counts (the isotropic 709,257 and hpx_a_former_s18's 27,928,674), the
official optimiser treatment, config-time errors, and the hybrid preset trains through train.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import count_parameters
from mixerlab.errors import ConfigError
from mixerlab.recipe import param_groups
from mixers.attention import Attention
from mixers.contract import TokenLayout
from mixers.hyenapixel import HyenaPixel, centre_distances, fft_conv2d_same, sincos_grid_codes

LAYOUT = TokenLayout(grid=(3, 5), num_prefix=1)  # rectangular, with a CLS token


def direct_same_conv2d(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y[..., i, j] = Σ_ab k[:, a, b] u[..., i + kh//2 - a, j + kw//2 - b] over the taps on the grid."""
    h, w = u.shape[-2:]
    kh, kw = k.shape[-2:]
    y = torch.zeros_like(u)
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    r, s = i + kh // 2 - a, j + kw // 2 - b
                    if 0 <= r < h and 0 <= s < w:
                        y[..., i, j] += k[:, a, b] * u[..., r, s]
    return y


@pytest.mark.parametrize("kernel", [(5, 9), (3, 3), (9, 11)], ids=["2h-1", "smaller", "larger"])
def test_fft_route_is_the_direct_centred_convolution(kernel):
    """(2h-1)x(2w-1) is the official size; a smaller and a larger kernel change the padding and the crop."""
    torch.manual_seed(0)
    u, k = torch.randn(2, 3, 3, 5), torch.randn(3, *kernel)
    expected = direct_same_conv2d(u, k)
    torch.testing.assert_close(fft_conv2d_same(u, k), expected, rtol=1e-4, atol=1e-5)
    flipped = F.conv2d(u, k.flip(-2, -1)[:, None], padding=(kernel[0] // 2, kernel[1] // 2), groups=3)
    torch.testing.assert_close(flipped, expected, rtol=1e-4, atol=1e-5)  # a convolution, not a correlation


def test_fft_route_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    u, k = torch.randn(1, 2, 4, 4).bfloat16(), torch.randn(2, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv2d_same(u, k)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, direct_same_conv2d(u.float(), k), rtol=1e-4, atol=1e-5)


def test_grid_codes_and_distances_are_the_official_initial_values():
    z = sincos_grid_codes(8, 3, 5)  # e/2 = 4 codes per axis: frequencies 1 and 10000^(-2/4) = 0.01
    i, j = 2, 4
    expected = [math.sin(j), math.cos(j), math.sin(0.01 * j), math.cos(0.01 * j),
                math.sin(i), math.cos(i), math.sin(0.01 * i), math.cos(0.01 * i)]
    torch.testing.assert_close(z[i, j], torch.tensor(expected))
    d = centre_distances(111, 111)
    assert d[55, 55].item() == 0 and d[0, 55].item() == 55
    assert d[0, 0].item() == pytest.approx(55 * math.sqrt(2))
    torch.testing.assert_close(centre_distances(3, 4)[0, 0], torch.tensor(math.hypot(1, 1.5)))


def reference(m: HyenaPixel, patches: torch.Tensor) -> torch.Tensor:
    """The operator from its equation: direct convolutions and the filter network written out."""
    B, n, C = patches.shape
    h, w = m.layout.grid
    z = m.pointwise_conv(patches).transpose(1, 2).reshape(B, 3 * C, h, w)
    q, k, v = F.conv2d(z, m.depthwise_conv.weight, m.depthwise_conv.bias, padding=2, groups=3 * C).split(C, 1)
    lc, f = m.long_conv, m.long_conv.implicit_filter
    hidden = torch.sin(f[1].freq * F.linear(lc.z, f[0].weight, f[0].bias))
    hidden = torch.sin(f[3].freq * F.linear(hidden, f[2].weight, f[2].bias))
    kernel = F.linear(hidden, f[4].weight)[0].permute(2, 0, 1)  # (C, 2h-1, 2w-1)
    a, b = torch.arange(2 * h - 1) - (h - 1), torch.arange(2 * w - 1) - (w - 1)
    dist = (a[:, None] ** 2 + b[None, :] ** 2).float().sqrt()
    kernel = kernel * (torch.exp(-dist * lc.deltas.abs()) + lc.shift)
    u = q * k
    if m.qk_norm is not None:
        u = F.layer_norm(u.permute(0, 2, 3, 1), (C,), m.qk_norm.weight).permute(0, 3, 1, 2)
    y = (v * (direct_same_conv2d(u, kernel) + lc.bias * u)).flatten(2).transpose(1, 2)
    if m.qk_norm is not None:
        y = F.layer_norm(y, (C,), m.out_norm.weight)
    return m.out_proj(y)


@pytest.mark.parametrize("layernorm", [False, True])
def test_hyenapixel_is_its_equation_and_gives_cls_no_update(layernorm):
    torch.manual_seed(0)
    m = HyenaPixel(8, LAYOUT, filter_emb_dim=4, layernorm=layernorm)
    assert m.long_conv.z.shape == (1, 5, 9, 4) and m.long_conv.implicit_filter[0].out_features == 8
    lc = m.long_conv
    with torch.no_grad():  # off their initial values: a misplaced shift, decay, frequency or norm shows
        for p in (lc.shift, lc.deltas, lc.implicit_filter[1].freq, lc.implicit_filter[3].freq):
            p.add_(0.3 * torch.randn_like(p))
        for norm in (m.qk_norm, m.out_norm) if layernorm else ():
            norm.weight.add_(0.3 * torch.randn_like(norm.weight))
    x = torch.randn(2, 16, 8)
    out = m(x)
    assert (out[:, 0] == 0).all()
    torch.testing.assert_close(out[:, 1:], reference(m, x[:, 1:]), rtol=1e-4, atol=1e-5)


def test_isotropic_hyenapixel_at_the_vit_grid_has_the_official_count():
    """MIXERS-III s6: a 14x14 grid, C = 384, kernel 27x27, grid codes of 48: 709,257 (708,528 trainable)."""
    m = HyenaPixel(384, TokenLayout(grid=(14, 14), num_prefix=1), filter_emb_dim=48)
    assert m.kernel_size == (27, 27) and m.long_conv.implicit_filter[0].out_features == 96
    assert count_parameters(m) == 709_257
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 708_528
    out = m(torch.randn(1, 197, 384))
    assert out.shape == (1, 197, 384) and torch.isfinite(out).all() and (out[:, 0] == 0).all()


def test_hpx_a_former_s18_is_caformer_with_hyenapixel_in_stages_1_2_and_the_official_count():
    with torch.device("meta"):
        model = build_backbone(compose_config(["experiment=hpx_a_former_s18"]))
    assert count_parameters(model) == 27_928_674
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == 6 and all(n.endswith("long_conv.distance_map") for n in frozen)
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == 3 * 111**2 + 3 * 55**2
    mixers = [block.mixer for block in model.blocks]
    assert [type(m) for m in mixers] == [HyenaPixel] * 6 + [Attention] * 12
    assert [m.kernel_size for m in mixers[:6]] == [(111, 111)] * 3 + [(55, 55)] * 3
    assert all(m.long_conv.z.shape[-1] == 32 and m.qk_norm is None for m in mixers[:6])
    assert [stage.layout.grid for stage in model.stages] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    res_scaled = [not isinstance(block.res_scale1, torch.nn.Identity) for block in model.blocks]
    assert res_scaled == [False] * 6 + [True] * 12


@pytest.mark.parametrize("backbone", ["vit_micro", "metaformer"])
def test_every_convolution_and_linear_starts_as_the_official_metaformer_inits_them(backbone):
    """trunc-normal(0.02), zero bias, the depthwise filter and the filter network included, in the ViT too
    (which initialises only Linear layers itself; PyTorch's defaults would give std 0.1-0.12 here)."""
    torch.manual_seed(0)
    model = build_backbone(compose_config([f"backbone={backbone}", "mixer=hyenapixel"]))
    m = model.blocks[0].mixer
    f = m.long_conv.implicit_filter
    for layer in (m.pointwise_conv, m.depthwise_conv, f[0], f[2], f[4], m.out_proj):
        assert 0.015 < layer.weight.std().item() < 0.025, layer
        assert layer.bias is None or (layer.bias == 0).all(), layer


def test_weight_decay_falls_as_in_the_official_timm_training():
    """timm's rule (no decay on 1-D tensors and ``.bias``) on the official shapes: Z, δ, s and the Sin
    frequencies are decayed, D (``long_conv.bias``) is not, the frozen distance map is never optimised."""
    m = HyenaPixel(8, TokenLayout(grid=(4, 4)))
    groups = param_groups(m, weight_decay=0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    optimised = {id(p) for g in groups for p in g["params"]}
    lc = m.long_conv
    for p in (lc.z, lc.deltas, lc.shift, lc.implicit_filter[1].freq, lc.implicit_filter[0].weight):
        assert id(p) in decayed
    assert id(lc.bias) in optimised - decayed and id(lc.distance_map) not in optimised


def test_options_that_cannot_build_fail_at_config_time_naming_the_stage():
    stage = r"backbone\.stages\[0\] \(HyenaPixel at a 8x8 grid, width 32\) cannot hold this mixer: "
    with pytest.raises(ConfigError, match=stage + r"mixer\.kernel_size=4 must be odd"):
        build_backbone(compose_config(["backbone=metaformer", "mixer=hyenapixel", "mixer.kernel_size=4"]))
    with pytest.raises(ConfigError, match=r"mixer\.filter_emb_dim=6 must be a positive multiple of 4"):
        HyenaPixel(8, LAYOUT, filter_emb_dim=6)


def test_the_hybrid_preset_trains_a_short_run(train_run):
    """experiment=hpx_a_former_s18 at tiny sizes (32 px, widths 16-32, one block a stage) on random images:
    HyenaPixel at the 8x8 and 4x4 grids, attention at 2x2 and 1x1, the preset's recipe, three steps."""
    attention = ("mixer:attention,mixer_options:{head_dim:16,qkv_bias:false,proj_bias:false},"
                 "block:{res_scale:1.0}")
    stages = f"backbone.stages=[{{depth:1,dim:16}},{{depth:1,dim:32}},{{depth:1,dim:32,{attention}}}," \
             f"{{depth:1,dim:32,{attention}}}]"
    overrides = ["experiment=hpx_a_former_s18", "data=synthetic", "data.img_size=32", "data.num_classes=10",
                 "data.batch_size=4", "data.num_train=12", "data.num_val=4", "data.pin_memory=false", stages,
                 "trainer.max_epochs=1", "callbacks.checkpoint.every_n_steps=0"]
    _, summary = train_run(*overrides)
    with torch.device("meta"):
        model = build_backbone(compose_config(overrides))
    assert summary["status"] == "completed" and summary["steps"] == 3 and summary["top1"] is not None
    assert summary["params"] == count_parameters(model)
    assert summary["mixer"] == "hyenapixelx1+hyenapixelx1+attentionx1+attentionx1"
