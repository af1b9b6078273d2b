"""Adaptive Fourier Neural Operator (Guibas et al. 2022, AFNO; NVlabs/AFNO-transformer ``afno/afno2d.py``).

    X = rfft2(x, dim=(h, w), norm="ortho")                         (B, h, w//2+1, C) complex, float32
    X -> num_blocks blocks of bs = C / num_blocks channels; per block a complex 2-layer MLP shared
         across frequencies:  Y = W2 ReLU_c(W1 X + b1) + b2     (ReLU on real and imaginary parts)
         W1: (2, nb, bs, bs*f), b1: (2, nb, bs*f), W2: (2, nb, bs*f, bs), b2: (2, nb, bs)   [0] real, [1] imag
    Y = softshrink(Y, lambda=0.01)                                 on real and imaginary parts
    out = irfft2(Y, s=(h, w), norm="ortho") + x                    the mixer adds its own input back

All weights ``0.02 * randn``. AFNO's block is GFNet's single residual
(``backbone.block.style=single_residual``). All frequency modes are kept (the paper's hard-thresholding
fraction 1).

CLS handling: the transform is defined on the patch grid; prefix tokens are left out and returned
unchanged (the "+ x" of a mixer whose spectral part is empty for them). The block-diagonal MLP's einsums
are counted by ``torch.utils.flop_counter``, the two FFTs by the formulas in ``mixerlab/costs.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, autocast_off, split_prefix


class AFNO(nn.Module):
    """AFNO's frequency-domain block-diagonal MLP on the patch grid (the module docstring's formula)."""

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_blocks: int = 8,
        hidden_size_factor: int = 1,
        sparsity_threshold: float = 0.01,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if dim % num_blocks:
            raise ConfigError(
                f"backbone.embed_dim={dim} is not divisible by mixer.num_blocks={num_blocks}: "
                "AFNO splits the channels into equal blocks"
            )
        self.layout = layout
        self.num_blocks = num_blocks
        self.sparsity_threshold = sparsity_threshold
        bs, hidden = dim // num_blocks, dim // num_blocks * hidden_size_factor
        self.w1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, bs, hidden))
        self.b1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, hidden))
        self.w2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, hidden, bs))
        self.b2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, bs))

    @staticmethod
    def _complex_linear(re, im, w, b):
        """(re + i im) @ (w[0] + i w[1]) + (b[0] + i b[1]), block-diagonal over the nb channel blocks."""
        real = torch.einsum("...bi,bio->...bo", re, w[0]) - torch.einsum("...bi,bio->...bo", im, w[1]) + b[0]
        imag = torch.einsum("...bi,bio->...bo", im, w[0]) + torch.einsum("...bi,bio->...bo", re, w[1]) + b[1]
        return real, imag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = split_prefix(x, self.layout)
        B, N, C = tokens.shape
        h, w = self.layout.grid
        with autocast_off(x.device):
            grid = tokens.reshape(B, h, w, C).float()
            spectrum = torch.fft.rfft2(grid, dim=(1, 2), norm="ortho")
            spectrum = spectrum.reshape(B, h, w // 2 + 1, self.num_blocks, C // self.num_blocks)
            re, im = self._complex_linear(spectrum.real, spectrum.imag, self.w1, self.b1)
            re, im = self._complex_linear(F.relu(re), F.relu(im), self.w2, self.b2)
            spectrum = F.softshrink(torch.stack([re, im], dim=-1), lambd=self.sparsity_threshold)
            spectrum = torch.view_as_complex(spectrum).reshape(B, h, w // 2 + 1, C)
            grid = torch.fft.irfft2(spectrum, s=(h, w), dim=(1, 2), norm="ortho")
        out = grid.reshape(B, N, C).to(x.dtype) + tokens
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out
