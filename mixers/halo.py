"""Blocked local self-attention with a halo (Vaswani et al. 2021, HaloNet, arXiv 2103.12731; no official
code: ``timm.layers.HaloAttn`` is reused, as timm's halonet models use it).

    tile the h x w patch grid into b x b query blocks; block B attends to its (b + 2 halo)^2 window W(B)
    q = W_q x,  k, v = W_kv x            (1x1 convs, no bias; zero-padded at the borders)
    A = softmax(q k^T / sqrt(d) + rel_h(q) + rel_w(q))     rel_*: factorised relative-position logits
    out = W_o (A v)                       W_o (Linear C -> C) added as a ViT mixer needs one

Cost O(N (b + 2 halo)^2 C), linear in N. Parameters 3C^2 (q, kv) + 2 (2 (b + 2 halo) - 1) d + C^2 + C.
The padded halo keys are zeros and stay in the softmax (as timm's). b must divide both grid sides (checked
at config time, ``mixer.block_size``): on the 4x4 digits grid b = 2, halo 1; at 224/16 (14x14) b = 7 (b = 14
is global attention). The CLS token is not on the grid: it passes through unchanged.
"""

from __future__ import annotations

import torch
from timm.layers.halo_attn import HaloAttn
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads, split_prefix


class Halo(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        block_size: int = 2,
        halo_size: int = 1,
        dim_head: int | None = None,
        qkv_bias: bool = False,
        scale_pos_embed: bool = False,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        h, w = layout.grid
        if block_size < 1 or h % block_size or w % block_size:
            fits = [b for b in range(1, min(h, w) + 1) if h % b == 0 and w % b == 0]
            raise ConfigError(
                f"mixer.block_size={block_size} does not divide the {h}x{w} patch grid "
                f"(data.img_size / backbone.patch_size): use one of {fits}"
            )
        if halo_size < 0:
            raise ConfigError(f"mixer.halo_size={halo_size} must be >= 0")
        self.layout = layout
        self.attn = HaloAttn(
            dim,
            num_heads=num_heads,
            dim_head=dim_head,
            block_size=block_size,
            halo_size=halo_size,
            qkv_bias=qkv_bias,
            scale_pos_embed=scale_pos_embed,
        )
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = split_prefix(x, self.layout)  # (B, P, C), (B, h*w, C)
        B, n, C = patches.shape
        grid = patches.transpose(1, 2).reshape(B, C, *self.layout.grid)  # HaloAttn is channels-first
        y = self.attn(grid).flatten(2).transpose(1, 2)  # (B, h*w, C)
        out = self.proj_drop(self.proj(y))
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out
