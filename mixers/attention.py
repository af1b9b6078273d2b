"""Multi-head self-attention (Vaswani et al. 2017; as in ViT/DeiT).

    q, k, v = x W_qkv            (B, N, C) -> 3 x (B, h, N, C/h)
    y = softmax(q k^T / sqrt(C/h)) v
    out = y W_o

Head dim 64 in DeiT (Ti 3 heads, S 6, B 12), qkv with bias. The product runs through
``torch.nn.functional.scaled_dot_product_attention`` so the fused CPU/flash/efficient kernels apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixers.contract import TokenLayout, check_heads


class Attention(nn.Module):
    # timm's ViT/DeiT attention has these parameters under these names (mixerlab/pretrained.py)
    pretrained_family = "attention"

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))
