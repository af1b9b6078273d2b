"""2-D Hyena, four-direction variant (Zimerman & Wolf 2024, Hyena N-D, arXiv 2309.13600). Official code:
PMLR supplementary material, not public (unverified); this follows the formula of the project's mixer
reference sheet (MIXERS-II s2.5) and, for the 1-D implicit filter, HazyResearch/safari
``src/models/sequence/hyena.py`` (``HyenaFilter``, ``PositionalEmbedding``, ``ExponentialModulation``).

    z = DWConv3x3(Linear_{C->(o+1)C}(x)) on the h x w grid; split into x_0 .. x_{o-1}, v   (order o = 2)
    per gate x_i (i = o-1 .. 1):  v <- v * x_i;  v <- sum_d a_d flip_d(K (*) flip_d(v) + D flip_d(v)) + a_0
    y = Linear_{C->C}(v * x_0)
    K[c, i, j] = hx[i, c] hy[j, c]  (separable),  h(t) = FFN(PE(t)) * (exp(-|delta_c| t) + shift), t in [0, 1]
    PE(t) = (t, cos, sin bands),  FFN = Linear(3, 64) -> Sin -> [Linear(64, 64) -> Sin] x 2 -> Linear(64, C)

``(*)`` is the linear 2-D convolution causal in both axes, in float32 (``autocast_off``). '4dir': the four
flips d of the grid (none, rows, columns, both), flipped back and mixed by Linear(4, 1) (a_d; started at the
mean), so every patch sees the whole grid. Two exact implementations (``long_conv``): 'toeplitz' (default)
uses that K is separable, K (*) v = T_x v T_y^T with T the lower-triangular Toeplitz matrix of each axis
filter, and that a flip turns T into T^T, so the four directions are two matrix products,
(a_1 T_x + a_2 T_x^T) v T_y^T + (a_3 T_x + a_4 T_x^T) v T_y, 4 h w (h + w) multiply-adds per channel;
'fft' is the paper's route, the four flipped copies in the batch, each FFT zero-padded to 2h x 2w and
cropped to [:h, :w]. The two agree to 2e-7 (relative). Toeplitz was faster at every grid measured on this
CPU, 8x8 to 112x112 (forward+backward 1.7-8.6x at batch 1, 17x at the proxy model's batch of 128;
BENCHMARKS.md, "2-D Hyena: Toeplitz vs FFT"); FFTs should win only on larger grids. One Sin (learnable
frequencies) and one PE are shared by the two axis filters (square grid).
The decay rates delta are a buffer (safari's ``modulation_lr=0``). Optimiser treatment (safari
``OptimModule``: filter lr 1e-3, positional-embedding lr 1e-5, weight decay 0): marked ``_optim`` with
``lr_scale`` relative to the recipe's LR, 1.0 and 0.01 by default (1e-3 is the DeiT recipe's LR at a global
batch of 1024). The filter MLPs keep PyTorch's default init, as safari's (``reset_mixer_parameters``).
The CLS token is not on the grid: it passes through unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, autocast_off, mark_optim, split_prefix


def toeplitz(h: torch.Tensor) -> torch.Tensor:
    """(C, n) filter taps -> (C, n, n) lower-triangular Toeplitz T[c, i, i'] = h[c, i - i'] (0 for i' > i)."""
    n = h.shape[-1]
    lag = torch.arange(n, device=h.device)[:, None] - torch.arange(n, device=h.device)[None, :]
    return h[:, lag.clamp(min=0)] * (lag >= 0)


def fft_conv2d(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal linear convolution (B, C, h, w) x (C, h, w) -> (B, C, h, w) by FFT on 2h x 2w, float32."""
    h, w = u.shape[-2:]
    with autocast_off(u.device):
        spectrum = torch.fft.rfft2(u.float(), s=(2 * h, 2 * w)) * torch.fft.rfft2(k.float(), s=(2 * h, 2 * w))
        y = torch.fft.irfft2(spectrum, s=(2 * h, 2 * w))[..., :h, :w]
    return y.to(u.dtype)


LONG_CONVS = ("toeplitz", "fft")


class Sin(nn.Module):
    def __init__(self, dim: int, freq: float = 1.0) -> None:
        super().__init__()
        self.freq = nn.Parameter(freq * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


def positional_embedding(length: int, emb_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """safari's PositionalEmbedding: z = (t, Re, Im of exp(-i f 2 pi n / L)) (1, L, emb_dim), t (1, L, 1)."""
    t = torch.linspace(0, 1, length)[None, :, None]
    bands = (emb_dim - 1) // 2
    angle = 2 * math.pi * torch.arange(length, dtype=torch.float32)[None, :, None] / length
    z = torch.exp(-1j * torch.linspace(1e-4, bands - 1, bands)[None, None] * angle)
    return torch.cat([t, z.real, z.imag], dim=-1), t


class Hyena2D(nn.Module):
    def __init__(
        self, dim: int, layout: TokenLayout, order: int = 2, filter_order: int = 64, emb_dim: int = 3,
        num_inner_mlps: int = 2, sin_freq: float = 1.0, fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5, decay_target: float = 1e-2, shift: float = 0.0,
        directional_mode: str = "4dir", grid_size: int | None = None, filter_lr_scale: float = 1.0,
        pos_emb_lr_scale: float = 0.01, dropout: float = 0.0, long_conv: str = "toeplitz",
        layer_index: int = 0, num_layers: int = 1,
    ) -> None:
        super().__init__()
        h, w = layout.grid
        if (grid_size is not None and grid_size != h) or h != w:
            raise ConfigError(
                f"mixer.grid_size={grid_size} but the backbone gives a {h}x{w} patch grid; the filters' "
                "positional embedding fixes a square grid: set mixer.grid_size=null to follow "
                "data.img_size / backbone.patch_size (square), or change those")
        if (order < 2 or directional_mode not in ("4dir", "causal") or emb_dim < 3 or emb_dim % 2 == 0
                or long_conv not in LONG_CONVS):
            raise ConfigError(f"mixer.order={order} (>= 2), mixer.directional_mode={directional_mode!r} "
                              f"('4dir' | 'causal'), mixer.emb_dim={emb_dim} (odd, >= 3), "
                              f"mixer.long_conv={long_conv!r} ({' | '.join(map(repr, LONG_CONVS))}): "
                              "one is invalid")
        self.layout, self.order, self.dim, self.long_conv_impl = layout, order, dim, long_conv
        width, channels = (order + 1) * dim, (order - 1) * dim
        self.in_proj = nn.Linear(dim, width)
        self.short_filter = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        z, t = positional_embedding(h, emb_dim)
        self.pos_emb = nn.Parameter(z)  # (1, h, emb_dim), shared by the row and column filters
        self.register_buffer("t", t, persistent=False)
        self.sin = Sin(filter_order, sin_freq)
        self.filter_x, self.filter_y = (self._filter_mlp(emb_dim, filter_order, num_inner_mlps, channels)
                                        for _ in range(2))
        fastest, slowest = math.log(decay_target) / fast_decay_pct, math.log(decay_target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(slowest, fastest, channels)[None, None])
        self.shift = shift
        self.bias = nn.Parameter(torch.randn(channels))  # D
        self.directions = nn.Linear(4, 1) if directional_mode == "4dir" else None
        for p in (*self.filter_x.parameters(), *self.filter_y.parameters()):
            mark_optim(p, weight_decay=0.0, lr_scale=filter_lr_scale)
        mark_optim(self.pos_emb, weight_decay=0.0, lr_scale=pos_emb_lr_scale)

    def _filter_mlp(self, emb_dim: int, order: int, inner: int, channels: int) -> nn.Sequential:
        layers = [nn.Linear(emb_dim, order), self.sin]
        for _ in range(inner):
            layers += [nn.Linear(order, order), self.sin]
        return nn.Sequential(*layers, nn.Linear(order, channels, bias=False))

    def reset_mixer_parameters(self) -> None:
        for m in (*self.filter_x, *self.filter_y):
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.directions is not None:
            nn.init.constant_(self.directions.weight, 0.25)
            nn.init.zeros_(self.directions.bias)

    def filters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """hx, hy (o-1, C, h): each an implicit MLP of PE(t) times the decay window; K = hx (x) hy."""
        window = torch.exp(-self.t * self.deltas.abs()) + self.shift  # (1, h, (o-1)C)
        hx, hy = (f(self.pos_emb) * window for f in (self.filter_x, self.filter_y))  # (1, h, (o-1)C)
        return tuple(f[0].T.reshape(self.order - 1, self.dim, -1) for f in (hx, hy))

    def long_conv(self, v: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """K (*) v + D v, in four flipped directions mixed by Linear(4, 1) ('4dir') or causal only."""
        if self.long_conv_impl == "fft":
            return self._long_conv_fft(v, hx[:, :, None] * hy[:, None, :], d)
        with autocast_off(v.device):
            tx, ty = toeplitz(hx.float()), toeplitz(hy.float())  # (C, h, h), (C, w, w)
            u = v.float()
            if self.directions is None:
                y = tx @ u @ ty.mT + d[:, None, None] * u
            else:  # flip_d(K (*) flip_d(u)) = T_x' u T_y'^T, a flip turning T into T^T (J T J = T^T)
                a, a0 = self.directions.weight[0].float(), self.directions.bias.float()
                y = ((a[0] * tx + a[1] * tx.mT) @ u @ ty.mT + (a[2] * tx + a[3] * tx.mT) @ u @ ty
                     + a.sum() * d[:, None, None] * u + a0)
        return y.to(v.dtype)

    def _long_conv_fft(self, v: torch.Tensor, k: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if self.directions is None:
            return fft_conv2d(v, k) + d[:, None, None] * v
        flips = [(), (-2,), (-1,), (-2, -1)]
        u = torch.cat([v.flip(f) if f else v for f in flips])  # (4B, C, h, w)
        y = (fft_conv2d(u, k) + d[:, None, None] * u).chunk(4)
        y = torch.stack([y_d.flip(f) if f else y_d for y_d, f in zip(y, flips, strict=True)], dim=-1)
        return self.directions(y).squeeze(-1)  # (B, C, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = split_prefix(x, self.layout)  # (B, P, C), (B, h*w, C)
        B, n, C = patches.shape
        z = self.in_proj(patches).transpose(1, 2).reshape(B, -1, *self.layout.grid)  # (B, (o+1)C, h, w)
        *gates, v = self.short_filter(z).split(C, dim=1)
        (hx, hy), d = self.filters(), self.bias.reshape(self.order - 1, C)
        for o, gate in enumerate(reversed(gates[1:])):
            v = self.long_conv(self.dropout(v * gate), hx[o], hy[o], d[o])
        y = (v * gates[0]).flatten(2).transpose(1, 2)  # (B, h*w, C)
        out = self.out_proj(y)
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out
