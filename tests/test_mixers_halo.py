"""HaloNet attention: an explicit loop over query blocks and their zero-padded halo windows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout
from mixers.halo import Halo


def explicit_halo(m: Halo, grid: torch.Tensor) -> torch.Tensor:
    """Per query: softmax over its block's window of q.k/sqrt(d) + q.rel_h[dy] + q.rel_w[dx], then W_o."""
    a = m.attn
    B, C, h, w = grid.shape
    H, d, b, halo = a.num_heads, a.dim_head_qk, a.block_size, a.halo_size
    win = b + 2 * halo
    q = a.q(grid).reshape(B, H, d, h, w)
    kv = F.pad(a.kv(grid), [halo] * 4).reshape(B, H, 2 * d, h + 2 * halo, w + 2 * halo)
    k, v = kv[:, :, :d], kv[:, :, d:]
    out = torch.zeros(B, H, d, h, w)
    for i in range(h):
        for j in range(w):
            top, left = i // b * b, j // b * b  # the query's block; its window starts halo before it (padded)
            qi = q[:, :, :, i, j]  # (B, H, d)
            keys = k[:, :, :, top : top + win, left : left + win]  # (B, H, d, win, win)
            logits = torch.einsum("bhd,bhdxy->bhxy", qi, keys) * d**-0.5
            rows = torch.arange(win) - (i - top) + win - 1  # relative offset key - query, shifted to >= 0
            cols = torch.arange(win) - (j - left) + win - 1
            logits = logits + (qi @ a.pos_embed.height_rel[rows].T)[..., :, None]
            logits = logits + (qi @ a.pos_embed.width_rel[cols].T)[..., None, :]
            attn = logits.flatten(2).softmax(-1)  # (B, H, win*win)
            values = v[:, :, :, top : top + win, left : left + win].flatten(3)  # (B, H, d, win*win)
            out[:, :, :, i, j] = torch.einsum("bhn,bhdn->bhd", attn, values)
    return m.proj(out.reshape(B, C, h * w).transpose(1, 2))


@pytest.mark.parametrize(("grid", "block", "halo"), [((4, 4), 2, 1), ((6, 6), 3, 1), ((4, 4), 2, 0)])
def test_halo_is_the_explicit_windowed_loop_and_passes_cls_through(grid, block, halo):
    torch.manual_seed(0)
    m = Halo(16, TokenLayout(grid=grid, num_prefix=1), num_heads=2, block_size=block, halo_size=halo)
    x = torch.randn(2, 1 + grid[0] * grid[1], 16)
    out = m(x)
    assert torch.equal(out[:, 0], x[:, 0])
    patches = x[:, 1:].transpose(1, 2).reshape(2, 16, *grid)
    torch.testing.assert_close(out[:, 1:], explicit_halo(m, patches), rtol=1e-5, atol=1e-5)


def test_halo_names_a_block_size_that_does_not_divide_the_grid():
    build_backbone(compose_config(["mixer=halo"]))
    with pytest.raises(ConfigError, match=r"mixer\.block_size=3 does not divide the 4x4 .* \[1, 2, 4\]"):
        build_backbone(compose_config(["mixer=halo", "mixer.block_size=3"]))


def test_halo_at_224_16_with_block_7():
    cfg = compose_config(["mixer=halo", "data.img_size=224", "backbone.patch_size=16", "mixer.block_size=7",
                          "mixer.halo_size=3"])
    model = build_backbone(cfg)
    assert model(torch.randn(1, 1, 224, 224)).shape == (1, 10)


def test_halo_parameter_count_is_qkv_plus_relative_tables_plus_output_projection():
    m = Halo(16, TokenLayout(grid=(4, 4)), num_heads=2, block_size=2, halo_size=1)  # d = 8, window 4
    assert sum(p.numel() for p in m.parameters()) == 3 * 16**2 + 2 * (2 * 4 - 1) * 8 + 16**2 + 16
