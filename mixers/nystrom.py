"""Nystromformer attention (Xiong et al., AAAI 2021, arXiv 2102.03902; official mlpen/Nystromformer
``code/attention_nystrom.py`` and, for images, ``ImageNet/T2T-ViT/models/token_nystromformer.py``).

    q, k, v = x W_qkv                                each (B, h, N, d); q, k scaled by d^-1/4
    q~, k~ = segment means of q, k                   (B, h, m, d): m landmarks over the 1-D token order
    out = softmax(q k~^T) pinv(softmax(q~ k~^T)) softmax(q~ k^T) v   [+ DWConv_k(v) along the tokens]
    y = out W_o

Segments are contiguous and of unequal length when m does not divide N, as in the official image code:
the first ``m - N mod m`` segments have ``N // m`` tokens, the rest one more; the CLS token (first) falls
into the first segment. pinv: 6 Newton-Schulz iterations Z <- Z/4 (13I - AZ(15I - AZ(7I - AZ))) from
Z0 = A^T / (max column sum of A), per sample and head (the official "exact" init; A is row-stochastic, so
this is A^T / (||A||_1 ||A||_inf)); it runs in float32 under autocast. ``conv_kernel_size``: the official
depthwise conv residual on v (one k x 1 kernel per head, no bias); 0 = off, the official image default.
``num_landmarks`` null = min(64, N // 2) (64: the official image default; N // 2 keeps segments of 2+
tokens on small grids).
"""

from __future__ import annotations

import torch
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, autocast_off, check_heads


def segment_means(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, h, N, d) -> (B, h, m, d): means of m contiguous segments, the short ones first."""
    B, h, N, d = x.shape
    short, n_short = N // m, m - N % m
    head = x[:, :, : n_short * short].reshape(B, h, n_short, short, d).mean(-2)
    tail = x[:, :, n_short * short :].reshape(B, h, m - n_short, short + 1, d).mean(-2)
    return torch.cat([head, tail], dim=2)


def newton_schulz_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Iterative Moore-Penrose inverse of (..., m, m), initialised per matrix."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    z = a.transpose(-2, -1) / a.sum(dim=-2).amax(dim=-1)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        qkv_bias: bool = True,
        num_landmarks: int | None = None,
        pinv_iterations: int = 6,
        conv_kernel_size: int = 0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        n = layout.num_tokens
        self.num_landmarks = min(64, max(1, n // 2)) if num_landmarks is None else num_landmarks
        if not 1 <= self.num_landmarks <= n:
            raise ConfigError(
                f"mixer.num_landmarks={num_landmarks} must be between 1 and the {n} tokens: lower it or set "
                "null (min(64, N // 2))"
            )
        if pinv_iterations < 1:
            raise ConfigError(f"mixer.pinv_iterations={pinv_iterations} must be at least 1 (official: 6)")
        if conv_kernel_size < 0 or (conv_kernel_size and conv_kernel_size % 2 == 0):
            raise ConfigError(f"mixer.conv_kernel_size={conv_kernel_size}: use 0 (off) or an odd size")
        self.num_heads, self.pinv_iterations = num_heads, pinv_iterations
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.conv = None
        if conv_kernel_size:
            pad = (conv_kernel_size // 2, 0)
            self.conv = nn.Conv2d(num_heads, num_heads, (conv_kernel_size, 1), padding=pad, groups=num_heads,
                                  bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        q, k = q * q.shape[-1] ** -0.25, k * k.shape[-1] ** -0.25
        q_l, k_l = segment_means(q, self.num_landmarks), segment_means(k, self.num_landmarks)  # (B, h, m, d)
        kernel_1 = torch.softmax(q @ k_l.transpose(-2, -1), dim=-1)  # (B, h, N, m)
        kernel_3 = torch.softmax(q_l @ k.transpose(-2, -1), dim=-1)  # (B, h, m, N)
        wide = torch.promote_types(x.dtype, torch.float32)  # half -> float32; float64 stays
        with autocast_off(x.device):
            kernel_2 = torch.softmax(q_l.to(wide) @ k_l.to(wide).transpose(-2, -1), dim=-1)  # (B, h, m, m)
            inverse = newton_schulz_pinv(kernel_2, self.pinv_iterations)
        y = (kernel_1 @ inverse.to(kernel_1.dtype)) @ (kernel_3 @ v)  # (B, h, N, d)
        if self.conv is not None:
            y = y + self.conv(v)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))
