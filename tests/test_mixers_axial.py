"""Axial attention: explicit per-row / per-column softmax attention, global CLS, the alternating preset."""

from __future__ import annotations

import pytest
import torch

from mixerlab.backbone import count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.axial import AxisAttention, ParallelAxialAttention
from mixers.contract import TokenLayout

LAYOUT = TokenLayout(grid=(3, 4), num_prefix=1)  # a non-square grid tells rows from columns


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1) @ v


def explicit_axis(m: AxisAttention, x: torch.Tensor) -> torch.Tensor:
    """Token by token: each patch attends to the patches of its own row (or column); CLS to all tokens."""
    B, N, C = x.shape
    H, (h, w) = m.num_heads, LAYOUT.grid
    q, k, v = m.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
    y = torch.zeros_like(q)
    y[:, :, :1] = softmax_attention(q[:, :, :1], k, v)
    for t in range(h * w):
        i, j = divmod(t, w)
        line = [1 + i * w + c for c in range(w)] if m.axis == "row" else [1 + r * w + j for r in range(h)]
        y[:, :, 1 + t] = softmax_attention(q[:, :, 1 + t : 2 + t], k[:, :, line], v[:, :, line])[:, :, 0]
    return m.proj(y.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("axis", ["row", "col"])
def test_axis_attention_is_softmax_attention_within_each_line_and_cls_is_global(axis):
    torch.manual_seed(0)
    m = AxisAttention(16, LAYOUT, axis=axis, num_heads=2)
    x = torch.randn(2, 13, 16)
    torch.testing.assert_close(m(x), explicit_axis(m, x), rtol=1e-5, atol=1e-6)


def test_parallel_axial_is_row_plus_column_with_lucidrains_parameter_count():
    torch.manual_seed(0)
    m = ParallelAxialAttention(16, LAYOUT, num_heads=2)
    x = torch.randn(2, 13, 16)
    torch.testing.assert_close(m(x), explicit_axis(m.row, x) + explicit_axis(m.col, x), rtol=1e-5, atol=1e-6)
    assert count_parameters(m) == 8 * 16**2 + 2 * 16
    assert count_parameters(AxisAttention(16, LAYOUT, num_heads=2)) == 4 * 16**2 + 4 * 16


def test_axial_names_a_bad_axis():
    with pytest.raises(ConfigError, match=r"mixer\.axis='diagonal'"):
        build_backbone(compose_config(["mixer=axial_row", "mixer.axis=diagonal"]))


def test_axial_vit_tiny_alternates_row_and_column_blocks_at_deit_tis_count():
    model = build_backbone(compose_config(["experiment=axial_vit_tiny"]))
    assert [b.mixer.axis for b in model.blocks] == ["row", "col"] * 6
    assert count_parameters(model) == 5_717_416


def test_axial_at_224_16_in_the_backbone():
    model = build_backbone(compose_config(["mixer=axial", "data.img_size=224", "backbone.patch_size=16",
                                           "backbone.head=cls"]))
    assert model(torch.randn(1, 1, 224, 224)).shape == (1, 10)
