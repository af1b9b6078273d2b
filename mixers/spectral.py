"""Global filter (Rao et al. 2021, GFNet; raoyongming/GFNet ``gfnet.py``), also SpectFormer's spectral layer
(Patro et al. 2023, badripatro/SpectFormers).

    x: (B, h*w, C) -> (B, h, w, C), cast to float32
    X = rfft2(x, dim=(h, w), norm="ortho")                  (B, h, w//2+1, C) complex
    X = X * W                                               W: learnable complex (h, w//2+1, C)
    out = irfft2(X, s=(h, w), norm="ortho")                 back to (B, h*w, C)

W is stored as a real (h, w//2+1, C, 2) tensor initialised ``randn * 0.02``: 224*C real parameters per layer
at 224/16. The papers' blocks have a single residual (``block.style=single_residual``) and no CLS token.

CLS handling: the filter is defined on the patch grid only. Prefix tokens (the CLS token) are left out of the
FFT and returned unchanged, exactly what a filter over a 1x1 grid would do, and still go through the
block's norms, residual and MLP.

The FFT runs in float32 even under autocast, as in the official code (half-precision FFTs need power-of-two
sizes). The two transforms' FLOPs are counted by the formulas in ``mixerlab/costs.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, autocast_off, split_prefix


class GlobalFilter(nn.Module):
    """GFNet's global filter: a learned elementwise filter in the 2-D Fourier domain of the patch grid."""

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        filter_size: list[int] | tuple[int, int] | None = None,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        h, w = layout.grid
        if filter_size is not None and tuple(filter_size) != (h, w):
            raise ConfigError(
                f"mixer.filter_size={list(filter_size)} but the backbone gives a {h}x{w} patch grid; the "
                "filter's weights fix the grid: set mixer.filter_size=null to follow data.img_size / "
                "backbone.patch_size, or change those"
            )
        self.layout = layout
        self.complex_weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = split_prefix(x, self.layout)
        B, N, C = tokens.shape
        h, w = self.layout.grid
        with autocast_off(x.device):
            grid = tokens.reshape(B, h, w, C).float()
            spectrum = torch.fft.rfft2(grid, dim=(1, 2), norm="ortho")  # (B, h, w//2+1, C)
            spectrum = spectrum * torch.view_as_complex(self.complex_weight.float())
            grid = torch.fft.irfft2(spectrum, s=(h, w), dim=(1, 2), norm="ortho")
        out = grid.reshape(B, N, C).to(x.dtype)
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out
