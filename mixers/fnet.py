"""FNet Fourier mixing (Lee-Thorp et al. 2022; google-research ``f_net/layers.py``).

    out = Re(FFT_2D(x))        the 2-D discrete Fourier transform over (tokens, hidden), real part kept

No parameters. FNet's encoder block is post-norm (``backbone.block.style=postnorm``): ``LN(x + mix(x))``,
``LN(x + FFN(x))``. The transform runs over the whole 1-D sequence, CLS token included, as FNet does with
its [CLS] token; it needs no grid, so any token count works. It runs in float32 (half-precision FFTs need
power-of-two sizes). The transform's FLOPs are counted by the formulas in ``mixerlab/costs.py`` (the real
input is cast to complex first, so it is one complex transform of n = N*C points).
"""

from __future__ import annotations

import torch
from torch import nn

from mixers.contract import TokenLayout, autocast_off


class FourierMixing(nn.Module):
    def __init__(self, dim: int, layout: TokenLayout, layer_index: int = 0, num_layers: int = 1) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_off(x.device):
            return torch.fft.fftn(x.float(), dim=(1, 2)).real.to(x.dtype)
