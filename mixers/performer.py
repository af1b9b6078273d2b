"""Performer: FAVOR+ attention with positive orthogonal random features (Choromanski et al., ICLR 2021,
arXiv 2009.14794; official google-research ``performer/fast_attention/jax/fast_attention.py``; PyTorch port
lucidrains/performer-pytorch).

    q, k, v = x W_qkv                                   each (B, h, N, d)
    phi(u) = m^-1/2 (exp(W u' - |u'|^2 / 2 - c) + eps),  u' = u d^-1/4, W (m, d) orthogonal Gaussian rows
    out = D^-1 phi(Q) (phi(K)^T V),  D = diag(phi(Q) phi(K)^T 1)        O(N m d), no N x N matrix
    y = out W_o

so that E[phi(q) . phi(k)] = exp(q . k / sqrt(d)) up to the stabilisers: c is the max of W u' over the
features (queries) or over features and tokens (keys), a constant that cancels in D^-1 (detached, as in
performer-pytorch); eps = 1e-6. ``kernel=relu`` is FAVOR+'s generalised kernel relu(W u') + 1e-3.

W (``projection``) is a persistent buffer: blocks of d orthogonal rows (QR of a Gaussian matrix), each row
rescaled to the norm of a Gaussian vector (the official ``scaling=0``). It is redrawn every
``redraw_interval`` training forwards (0: never; performer-pytorch's default 1000), counted by the ``step``
buffer, from a generator seeded by (``seed``, layer index, step): every rank draws the same matrix and a
resumed run replays the same draws. The weight EMA copies W instead of averaging it. m = ``num_features``,
default ``d ln d`` (performer-pytorch). The features and both products run in float32 under autocast.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, autocast_off, check_heads, step_generator

KERNELS = ("softmax", "relu")


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(m, d): ceil(m / d) blocks of orthonormal rows, each row scaled to a chi_d-distributed norm."""
    gaussian = lambda *shape: torch.randn(*shape, generator=generator, device="cpu")  # noqa: E731
    blocks = [torch.linalg.qr(gaussian(d, d))[0].T for _ in range(-(-m // d))]
    norms = gaussian(m, d).norm(dim=1, keepdim=True)
    return torch.cat(blocks)[:m] * norms


class Performer(nn.Module):
    ema_copy_buffers = ("projection",)

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        qkv_bias: bool = True,
        num_features: int | None = None,
        redraw_interval: int = 1000,
        kernel: str = "softmax",
        seed: int = 0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        head_dim = dim // num_heads
        if num_features is None:
            num_features = max(1, int(head_dim * math.log(head_dim)))
        if num_features < 1:
            raise ConfigError(f"mixer.num_features={num_features}: use a positive count or null (d ln d)")
        if redraw_interval < 0:
            raise ConfigError(f"mixer.redraw_interval={redraw_interval}: use 0 (never) or a step count")
        if kernel not in KERNELS:
            raise ConfigError(f"mixer.kernel={kernel!r}: use one of {list(KERNELS)}")
        self.num_heads, self.kernel, self.seed, self.layer_index = num_heads, kernel, seed, layer_index
        self.redraw_interval = redraw_interval
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.register_buffer("projection", torch.zeros(num_features, head_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.redraw()

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw W from (seed, layer, step) on the CPU (the same numbers on any device), unless on meta."""
        if self.projection.device.type == "meta":
            return
        generator = step_generator(self.seed, self.layer_index, int(self.step), torch.device("cpu"))
        self.projection.copy_(orthogonal_gaussian(*self.projection.shape, generator))

    def features(self, u: torch.Tensor, is_query: bool) -> torch.Tensor:
        """phi(u): (B, h, N, d) float32 -> (B, h, N, m) positive features."""
        m, d = self.projection.shape
        u = u * d**-0.25
        wu = u @ self.projection.to(u.dtype).T  # (B, h, N, m)
        if self.kernel == "relu":
            return torch.relu(wu) + 1e-3
        dims = (-1,) if is_query else (-2, -1)
        stabiliser = wu.amax(dim=dims, keepdim=True).detach()
        return m**-0.5 * (torch.exp(wu - u.pow(2).sum(-1, keepdim=True) / 2 - stabiliser) + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        if self.training:
            if self.redraw_interval and int(self.step) % self.redraw_interval == 0 and int(self.step):
                self.redraw()
            self.step += 1
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        wide = torch.promote_types(x.dtype, torch.float32)  # half -> float32; float64 stays
        with autocast_off(x.device):
            q_f, k_f = self.features(q.to(wide), True), self.features(k.to(wide), False)  # (B, h, N, m)
            kv = k_f.transpose(-2, -1) @ v.to(wide)  # (B, h, m, d)
            normaliser = q_f @ k_f.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, N, 1) = D
            y = (q_f @ kv) / normaliser
        y = y.to(x.dtype).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))
