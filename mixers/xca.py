"""Cross-covariance attention (El-Nouby et al. 2021, XCiT; facebookresearch/xcit ``xcit.py``).

    q, k, v = x W_qkv                                  each (B, h, d_h, N): channels attend, not tokens
    q^, k^ = q / ||q||, k / ||k||                      L2-normalised along the N tokens
    A = softmax(tau_h * q^ k^T)                        (B, h, d_h, d_h), tau learnable (h, 1, 1), init 1
    out = (A v) W_o                                    back to (B, N, C)

Linear in N. tau is kept out of weight decay (:meth:`XCA.no_weight_decay`, collected by the backbone).
XCiT's full layer adds a local patch interaction (depthwise 3x3 convs) and LayerScale; this mixer is the
XCA operator alone in the standard block. All tokens, CLS included, enter the channel covariance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixers.contract import TokenLayout, check_heads


class XCA(nn.Module):
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
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)  # each (B, h, d_h, N)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (B, h, d_h, d_h)
        attn = self.attn_drop(attn.softmax(dim=-1))
        y = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))

    def no_weight_decay(self) -> set[str]:
        return {"temperature"}
