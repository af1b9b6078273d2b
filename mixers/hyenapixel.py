"""HyenaPixel: Hyena's gated long convolution with a full 2-D kernel (Spravil, Houben, Behnke,
"HyenaPixel: Global Image Context with Convolutions", ECAI 2024, arXiv 2402.19305; official code
spravil/HyenaPixel ``src/hyenapixel/nn/hyenapixel.py`` ``HyenaPixelOperator`` / ``Hyena2DConv``,
``nn/functional/fft_convolution.py`` ``fftconv2d``, ``models.py``).

    q, k, v = split(DWConv_5x5(W_in x))                       W_in: Linear C -> 3C (bias), on the h x w grid
    u = q ⊙ k                                                  (LN(q ⊙ k) with ``layernorm``: no bias)
    y = W_out (v ⊙ (K ⊛ u + D ⊙ u))                           (W_out LN(...) with ``layernorm``)
    K[c] = FFN(Z)[c] ⊙ (exp(-dist ⊙ |δ_c|) + s_c)              one (2h-1) x (2w-1) kernel per channel
    FFN = Linear(e, f) -> Sin -> Linear(f, f) -> Sin -> Linear(f, C, no bias),   f = 2e by default

``⊛`` is the non-causal linear 2-D convolution with the output centred on the input ("same"):
``(K ⊛ u)[i, j] = Σ_ab K[a, b] u[i + kh//2 - a, j + kw//2 - b]``, zero outside the grid. With the kernel
(2h - 1) x (2w - 1) (``kernel_size: null``; the official 111 / 55 / 27 / 13 at 56 / 28 / 14 / 7 grids) every
patch sees every other. It runs as the official code's route: both factors zero-padded to max(2h, kh) x
max(2w, kw), rfft2, product, irfft2, crop the centred h x w window, in float32 (``autocast_off``).
That padding is shorter than the full linear length h + kh - 1, but the circular wrap-around lands only
outside the cropped window (tested against a direct sum). ``F.conv2d`` with the flipped kernel and padding
kh//2 computes the same directly, at 56 x 56 with a 111 x 111 kernel about 60x the FLOPs of the three
transforms; torch has no FFT convolution, so it is written here.

Z is a learnable (kh, kw, e) grid initialised with 2-D sin/cos codes (the first e/2 channels encode the
column, the last e/2 the row: channel 2j = sin(p ω_j), 2j + 1 = cos(p ω_j), ω_j = 10000^(-2j/(e/2)), p the
0-based index). dist is each tap's distance from the kernel's centre (pixel centres); δ (init linspace of
ln(1e-2)/1.5 .. ln(1e-2)/0.3 over the channels, divided by the kernel side) and s (init 0) are trained per
channel; D (``bias``, init N(0, 1)) is the per-channel skip. ``decay: false`` drops the window.

Parameters, counted as the official operator counts them: 4C² + 82C (projections with biases, 5x5 short
filter), e·kh·kw (Z), ef + f² + fC + 4f (filter network: weights, biases, Sin frequencies), 3C (δ, s, D), and
kh·kw for the distance map, which is an ``nn.Parameter`` with ``requires_grad=False`` here as there: it
counts, it is saved, it is never optimised (the recipe skips it). 709,257 at C = 384, a 14 x 14 grid
(27 x 27 kernel), e = 48, of which 708,528 train.

Departures from the official code, none changing the function: the token-wise layers are ``nn.Linear``
(official 1x1 ``Conv2d``: the same weights with a trailing (1, 1)); Z is stored channels-last (1, kh, kw, e)
and the filter network is Linear layers on it (official: NCHW and 1x1 convolutions); the kernel is computed
in float32 under autocast (official: in the AMP dtype, then cast to float32 for the FFT); a non-square kernel
divides δ by its longer side. Weight decay falls as in the official timm training (none on 1-D tensors and
``.bias``): Z, δ, s and the Sin frequencies are decayed, D is not. Initialisation
(``reset_mixer_parameters``): trunc-normal(0.02) weights and zero biases on every Linear and convolution,
the filter network's included, as the official MetaFormer's ``_init_weights`` does; done here so that the
ViT, which initialises Linear layers only, gives the same. Not offered: the official ablation switches
(explicit or separable kernels, drop-connect sparsity, 1-D positional codes).

CLS handling: the operator is defined on the patch grid; a prefix token's output is 0 (the residual leaves
it unchanged), as the SepConv mixer's.
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, autocast_off, split_prefix
from mixers.hyena import Sin


def fft_conv2d_same(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Centred linear convolution (B, C, h, w) ⊛ (C, kh, kw) -> (B, C, h, w) in float32, by zero-padded FFT.

    ``y[i, j] = Σ_ab k[a, b] u[i + kh//2 - a, j + kw//2 - b]`` for odd kh, kw. Padding to max(2h, kh) keeps
    the wrap-around out of the cropped rows: they are kh//2 .. kh//2 + h - 1 of a linear result h + kh - 1
    long, and a period P > h + kh//2 - 1 > (h + kh - 2) - kh//2 folds nothing onto them.
    """
    h, w = u.shape[-2:]
    kh, kw = k.shape[-2:]
    size = (max(2 * h, kh), max(2 * w, kw))
    with autocast_off(u.device):
        spectrum = torch.fft.rfft2(u.float(), s=size) * torch.fft.rfft2(k.float(), s=size)
        return torch.fft.irfft2(spectrum, s=size)[..., kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w]


def sincos_grid_codes(emb_dim: int, height: int, width: int) -> torch.Tensor:
    """(height, width, emb_dim) 2-D sin/cos codes: column codes in the first half, row codes in the second."""
    half = emb_dim // 2
    freqs = torch.exp(torch.arange(0.0, half, 2) * -(math.log(10000.0) / half))  # (half / 2,)

    def codes(n: int) -> torch.Tensor:  # (n, half): sin, cos interleaved per frequency
        angle = torch.arange(0.0, n)[:, None] * freqs
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)

    column = codes(width)[None].expand(height, width, half)
    row = codes(height)[:, None].expand(height, width, half)
    return torch.cat([column, row], dim=-1)


def centre_distances(height: int, width: int) -> torch.Tensor:
    """(height, width) Euclidean distance of each cell's centre from the grid's centre."""
    i = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    j = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    return (i[:, None] ** 2 + j[None, :] ** 2).sqrt().float()


class ImplicitLongConv2d(nn.Module):
    """``u -> K ⊛ u + D ⊙ u`` with K from the implicit 2-D filter network (official ``Hyena2DConv``)."""

    def __init__(
        self, dim: int, kernel_size: tuple[int, int], emb_dim: int, order: int, decay: bool = True
    ) -> None:
        super().__init__()
        kh, kw = kernel_size
        self.z = nn.Parameter(sincos_grid_codes(emb_dim, kh, kw)[None])  # (1, kh, kw, e)
        self.implicit_filter = nn.Sequential(
            nn.Linear(emb_dim, order), Sin(order), nn.Linear(order, order), Sin(order),
            nn.Linear(order, dim, bias=False),
        )
        self.decay = decay
        if decay:
            fastest, slowest = math.log(1e-2) / 0.3, math.log(1e-2) / 1.5
            deltas = torch.linspace(slowest, fastest, dim)[:, None, None] / max(kh, kw)
            self.distance_map = nn.Parameter(centre_distances(kh, kw), requires_grad=False)
            self.deltas = nn.Parameter(deltas)  # (C, 1, 1)
            self.shift = nn.Parameter(torch.zeros(dim, 1, 1))
        self.bias = nn.Parameter(torch.randn(dim, 1, 1))  # D

    def kernel(self) -> torch.Tensor:
        """(C, kh, kw) in float32; batch-independent, so float32 costs one filter evaluation per forward."""
        with autocast_off(self.z.device):
            k = self.implicit_filter(self.z)[0].permute(2, 0, 1)  # (1, kh, kw, C) -> (C, kh, kw)
            if self.decay:
                k = k * (torch.exp(-self.distance_map * self.deltas.abs()) + self.shift)
        return k

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C, h, w)
        with autocast_off(u.device):
            y = fft_conv2d_same(u, self.kernel()) + self.bias * u.float()
        return y.to(u.dtype)


class HyenaPixel(nn.Module):
    pretrained_family = "hyenapixel"

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        kernel_size: int | None = None,
        short_kernel_size: int = 5,
        filter_emb_dim: int = 32,
        filter_order: int | None = None,
        decay: bool = True,
        layernorm: bool = False,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        h, w = layout.grid
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ConfigError(f"mixer.kernel_size={kernel_size} must be odd (the output is centred on the "
                              f"grid), or null for (2h-1)x(2w-1) = {2 * h - 1}x{2 * w - 1} at this grid")
        if short_kernel_size < 1 or short_kernel_size % 2 == 0:
            raise ConfigError(f"mixer.short_kernel_size={short_kernel_size} must be odd")
        if filter_emb_dim < 4 or filter_emb_dim % 4:
            raise ConfigError(f"mixer.filter_emb_dim={filter_emb_dim} must be a positive multiple of 4 "
                              "(sin and cos codes of the row and of the column)")
        if filter_order is not None and filter_order < 1:
            raise ConfigError(f"mixer.filter_order={filter_order} must be positive (null: 2 filter_emb_dim)")
        self.layout, self.dim = layout, dim
        self.kernel_size = (2 * h - 1, 2 * w - 1) if kernel_size is None else (kernel_size, kernel_size)
        self.pointwise_conv = nn.Linear(dim, 3 * dim)
        self.depthwise_conv = nn.Conv2d(3 * dim, 3 * dim, short_kernel_size, padding=short_kernel_size // 2,
                                        groups=3 * dim)
        self.long_conv = ImplicitLongConv2d(dim, self.kernel_size, filter_emb_dim,
                                            filter_order or 2 * filter_emb_dim, decay)
        self.qk_norm = nn.LayerNorm(dim, bias=False) if layernorm else None
        self.out_norm = nn.LayerNorm(dim, bias=False) if layernorm else nn.Identity()
        self.out_proj = nn.Linear(dim, dim)

    def reset_mixer_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = split_prefix(x, self.layout)  # (B, P, C), (B, h*w, C)
        B, n, C = tokens.shape
        z = self.pointwise_conv(tokens).transpose(1, 2).reshape(B, 3 * C, *self.layout.grid)  # (B, 3C, h, w)
        q, k, v = self.depthwise_conv(z).split(C, dim=1)  # (B, C, h, w) each
        u = q * k
        if self.qk_norm is not None:  # over the channels of each patch
            u = self.qk_norm(u.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = (v * self.long_conv(u)).flatten(2).transpose(1, 2)  # (B, h*w, C)
        out = self.out_proj(self.out_norm(y))
        return torch.cat([torch.zeros_like(prefix), out], dim=1) if prefix.shape[1] else out
