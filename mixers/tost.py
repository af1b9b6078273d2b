"""Token statistics self-attention, TSSA (Wu et al., ICLR 2025, "Token Statistics Transformer", arXiv
2412.17810; official code RobinWu218/ToST ``tost_vision/tost.py``, class ``AttentionTSSA``).

    w = x W + b                                         (B, N, C) -> (B, H, N, d), one projection, no q/k/v
    w^ = w / ||w||_tokens                               L2-normalised over the N tokens, per head and channel
    Pi[k, i] = softmax_k(tau_k * sum_d w^[k, i, d]^2)   softmax over the H HEADS (official ``Softmax(dim=1)``)
    pi[k, i] = Pi[k, i] / (sum_i Pi[k, i] + 1e-8)       normalised over the tokens
    D[k, d] = 1 / (1 + sum_i pi[k, i] w[k, i, d]^2)     a per-head, per-channel second moment
    out[k, i, d] = -Pi[k, i] w[k, i, d] D[k, d]         merge heads, then Linear(C, C)

Tokens interact only through the per-head statistics D: O(N C) time (hand-written: not in timm).
2C^2 + 2C + H parameters per layer (projection with ``qkv_bias``, output projection, temperatures tau,
init 1). tau is kept out of weight decay as in the official code (:meth:`TSSA.no_weight_decay`). The
statistics (norms over tokens, squares, the head softmax) are computed in float32 even under bf16 autocast:
sums of squares over ~200 tokens lose too much in bf16's 8-bit mantissa; the result is cast back to the
input dtype before the output projection.

Some derived copies take the softmax over the tokens instead; the official code, and this module, take it
over the heads. CLS handling: the reference model (XCiT-style) has no CLS token in its TSSA layers (CLS
joins only for two final class-attention layers: ``backbone.class_attention_layers=2``, presets
``tost_tiny`` / ``tost_small``). With a CLS token in the blocks (``layout.num_prefix = 1``) the prefix is
passed through unchanged and left out of the statistics, so the patch tokens compute what the reference
computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixers.contract import TokenLayout, autocast_off, check_heads, split_prefix


def token_statistics(w: torch.Tensor, temp: torch.Tensor, attn_drop: nn.Module) -> torch.Tensor:
    """The TSSA operator on one projection ``w`` (B, H, N, d) with temperatures ``temp`` (H, 1)."""
    w_hat_sq = F.normalize(w, dim=-2) ** 2  # (B, H, N, d), unit norm over tokens
    Pi = torch.softmax(w_hat_sq.sum(-1) * temp, dim=1)  # (B, H, N), over heads
    pi = Pi / (Pi.sum(-1, keepdim=True) + 1e-8)  # (B, H, N), over tokens
    D = 1.0 / (1.0 + pi.unsqueeze(-2) @ w**2)  # (B, H, 1, d)
    return -(w * Pi.unsqueeze(-1)) * attn_drop(D)  # (B, H, N, d)


class TSSA(nn.Module):
    """ToST's token statistics self-attention: linear in the tokens (the module docstring's formula)."""

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
        self.layout = layout
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim, bias=qkv_bias)  # the official name: one projection
        self.temp = nn.Parameter(torch.ones(num_heads, 1))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = split_prefix(x, self.layout)
        B, N, C = tokens.shape
        w = self.qkv(tokens).reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)
        with autocast_off(x.device):
            out = token_statistics(w.float(), self.temp.float(), self.attn_drop)  # (B, H, N, d)
        out = out.to(w.dtype).transpose(1, 2).reshape(B, N, C)
        out = self.proj_drop(self.proj(out))
        return torch.cat([prefix, out.to(x.dtype)], dim=1) if prefix.shape[1] else out

    def no_weight_decay(self) -> set[str]:
        return {"temp"}
