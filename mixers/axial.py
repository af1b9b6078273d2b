"""Axial attention (Ho, Kalchbrenner, Weissenborn, Salimans 2019, arXiv 1912.12180; google-research
``axial/transformers.py`` ``AttnBlock(axis)``; the parallel form of lucidrains/axial-attention
``axial_attention.py`` ``AxialAttention(sum_axial_out=True)``).

    Row(x):  MHSA within each grid row: every patch attends to the w patches of its row    (SDPA)
    Col(x):  MHSA within each grid column: the h patches of its column
    axial_row / axial_col (faithful, Ho et al.'s unmasked encoder): one axis per layer; separate pre-LN
             blocks alternate them through ``backbone.schedule`` (preset ``axial_vit_tiny``)
    axial (parallel, lucidrains):  y = Row(x) + Col(x), each axis with its own projections

Cost O(N (h + w) C). Parameters: one axis 4C^2 + 4C (as MHSA, qkv with bias); parallel 8C^2 + 2C (two
axes, qkv without bias and W_o with bias, as lucidrains'). CLS is not on the grid: its query attends
globally, to every token (CLS and all patches) with the layer's own projections, so a CLS head reads the whole
image; the patches' rows and columns do not include the CLS token (the papers have none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads

AXES = ("row", "col")


class AxisAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        axis: str = "row",
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if axis not in AXES:
            raise ConfigError(f"mixer.axis={axis!r} must be one of {list(AXES)}")
        self.layout, self.axis, self.num_heads = layout, axis, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        P, (h, w) = self.layout.num_prefix, self.layout.grid
        drop = self.attn_drop if self.training else 0.0
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
        lines = [t[:, :, P:].unflatten(2, (h, w)) for t in (q, k, v)]  # (B, H, h, w, d)
        if self.axis == "col":
            lines = [t.transpose(2, 3) for t in lines]  # (B, H, w, h, d): attend along the columns
        y = F.scaled_dot_product_attention(*lines, dropout_p=drop)  # softmax within each row / column
        y = (y.transpose(2, 3) if self.axis == "col" else y).flatten(2, 3)  # (B, H, h*w, d)
        if P:
            cls = F.scaled_dot_product_attention(q[:, :, :P], k, v, dropout_p=drop)  # (B, H, P, d): global
            y = torch.cat([cls, y], dim=2)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, C)))


class ParallelAxialAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        options = dict(num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.row = AxisAttention(dim, layout, "row", **options)
        self.col = AxisAttention(dim, layout, "col", **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row(x) + self.col(x)  # (B, N, C)
