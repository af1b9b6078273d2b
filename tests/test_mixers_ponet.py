"""PoNet against its formula (official segments and the grid-aware variant), its CLS rule, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from mixerlab.backbone import count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout
from mixers.ponet import PoNet, segment_index
from scripts.model_info import model_info

GRID = TokenLayout(grid=(4, 4), num_prefix=0)
CLS_GRID = TokenLayout(grid=(4, 4), num_prefix=1)


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def naive_ponet(m: PoNet, x: torch.Tensor) -> torch.Tensor:
    """Token by token: neighbours and segment mates listed explicitly, CLS kept out of both max-pools."""
    B, N, C = x.shape
    P, (h, w), H = m.layout.num_prefix, m.layout.grid, m.num_heads
    d = C // H
    q, k, o = linear(m.q, x), linear(m.k, x), linear(m.o, x)
    s_in, l_in = linear(m.segment, x), linear(m.local, x)
    out = torch.zeros(B, N, C)
    for b in range(B):
        g = torch.zeros(C)
        for head in range(H):
            heads = slice(head * d, (head + 1) * d)
            mean_q = q[b, :, heads].mean(0)
            logits = torch.stack([mean_q @ k[b, j, heads] / math.sqrt(d) for j in range(N)])
            g[heads] = (torch.softmax(logits, 0)[:, None] * k[b, :, heads]).sum(0)  # V tied to K
        for i in range(N):
            if i < P:
                out[b, i] = g * o[b, i]  # CLS: the global term only
                continue
            t = i - P
            if m.grid_aware:
                r, c = divmod(t, w)
                mates = [r * w + cc for cc in range(w)]
                near = [rr * w + cc for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)
                        if 0 <= rr < h and 0 <= cc < w]
            else:
                mates = [j for j in range(h * w) if m.segments[j] == m.segments[t]]
                near = [j for j in (t - 1, t, t + 1) if 0 <= j < h * w]
            seg = torch.stack([s_in[b, P + j] for j in mates]).amax(0)
            loc = torch.stack([l_in[b, P + j] for j in near]).amax(0)
            out[b, i] = (g + seg) * o[b, i] + loc
    return linear(m.proj, out)


@pytest.mark.parametrize("layout", [GRID, CLS_GRID], ids=["gap", "cls"])
@pytest.mark.parametrize("grid_aware", [False, True])
def test_ponet_is_the_official_formula(layout, grid_aware):
    torch.manual_seed(0)
    mixer = PoNet(8, layout, num_heads=2, grid_aware=grid_aware)
    x = torch.randn(2, layout.num_tokens, 8)
    torch.testing.assert_close(mixer(x), naive_ponet(mixer, x), atol=1e-5, rtol=1e-4)
    assert count_parameters(mixer) == 6 * 8 * 8 + 6 * 8


def test_official_segments_are_length_m_over_n_plus_one_and_straddle_rows():
    assert segment_index(GRID, None, False).tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3]  # 16 // 4 + 1 = 5
    assert segment_index(GRID, None, True).tolist() == [r for r in range(4) for _ in range(4)]
    assert segment_index(TokenLayout((14, 14), 1), None, False).bincount().tolist() == [15] * 13 + [1]


@pytest.mark.parametrize("grid_aware", [False, True])
def test_cls_stays_out_of_the_max_pools_and_gets_only_the_global_term(grid_aware):
    torch.manual_seed(0)
    mixer = PoNet(8, CLS_GRID, num_heads=2, grid_aware=grid_aware)
    with torch.no_grad():  # K = its bias for every token: the global term no longer depends on the CLS token
        mixer.k.weight.zero_()
    x = torch.randn(2, 17, 8)
    y = x.clone()
    y[:, 0] = 100.0  # a CLS token that would win every max-pool it entered
    torch.testing.assert_close(mixer(y)[:, 1:], mixer(x)[:, 1:])
    g = mixer.k.bias  # softmax over identical keys: g' = K
    torch.testing.assert_close(mixer(x)[:, 0], mixer.proj(g * mixer.o(x[:, 0])))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["mixer.segment_num=0"], r"mixer\.segment_num=0 must be"),
        (["mixer.segment_num=17"], r"mixer\.segment_num=17 must be"),
        (["mixer.grid_aware=true", "mixer.segment_num=3"], r"mixer\.segment_num=3 with mixer\.grid_aware"),
        (["mixer.num_heads=3"], r"mixer\.num_heads=3"),
    ],
)
def test_ponet_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_backbone(compose_config(["mixer=ponet", *overrides]))


def test_ponet_builds_at_224_with_cls_and_in_the_post_norm_block():
    cfg = ["mixer=ponet", "backbone=vit_tiny", "backbone.depth=1", "data.img_size=224", "data.in_chans=3"]
    model = build_backbone(compose_config([*cfg, "backbone.block.style=postnorm"]))
    assert model.blocks[0].mixer.layout.num_tokens == 197 and model.blocks[0].spec.style == "postnorm"
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = PoNet(8, CLS_GRID, num_heads=2)(torch.randn(2, 17, 8))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_ponet_counts_on_the_meta_device_at_224():
    info = model_info(["mixer=ponet", "backbone=vit_tiny", "data.img_size=224", "data.in_chans=3"])
    C, head_1000_to_10 = 192, -990 * 192 - 990  # DeiT-Ti with 12 x (6C^2 + 6C) for attention's 4C^2 + 4C
    assert info["tokens"] == 197 and info["params"] == 5_717_416 + head_1000_to_10 + 12 * (2 * C * C + 2 * C)
