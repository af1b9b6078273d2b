"""ConvFormer's token mixer: an inverted separable convolution (Yu et al., "MetaFormer Baselines for Vision",
TPAMI 2024, arXiv 2210.13452; sail-sg/metaformer ``metaformer_baselines.py`` SepConv, timm ``metaformer.py``
SepConv; the MobileNetV2 block of Sandler et al. 2018).

    out = W2 · DWConv_k×k( StarReLU( W1 x ) )      (B, N, C) -> (B, N, 2C) -> (B, 2C, h, w) -> (B, N, C)

W1 (C -> 2C) and W2 (2C -> C) act on each token; the depthwise k×k convolution (k = 7, zero padding k // 2)
is the only place tokens meet. No biases; StarReLU(x) = s·ReLU(x)² + b with one learnable s and b per mixer
(timm's ``StarReLU``, reused): 4C² + 2C·k² + 2 parameters (627,458 at C = 384, k = 7).

The pointwise layers are ``nn.Linear`` on tokens, as in the official channels-last code; timm stores them as
1×1 convolutions, whose weights the converter (``mixerlab/pretrained.py``) flattens.

CLS handling: the convolution is defined on the patch grid; a prefix token's output is 0 (the residual
leaves it unchanged), as the pooling mixer's.
"""

from __future__ import annotations

import torch
from timm.models.metaformer import StarReLU
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, split_prefix


class SepConv(nn.Module):
    pretrained_family = "sepconv"  # timm's token_mixer.{pwconv1, act1, dwconv, pwconv2}

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        expansion_ratio: float = 2.0,
        kernel_size: int = 7,
        bias: bool = False,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"mixer.kernel_size={kernel_size} must be odd: the output keeps the grid size")
        self.layout = layout
        hidden = int(expansion_ratio * dim)
        self.pwconv1 = nn.Linear(dim, hidden, bias=bias)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(
            hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=bias
        )
        self.pwconv2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = split_prefix(x, self.layout)
        B, N, _ = tokens.shape
        y = self.act1(self.pwconv1(tokens))  # (B, h*w, 2C)
        grid = y.transpose(1, 2).reshape(B, -1, *self.layout.grid)  # (B, 2C, h, w)
        y = self.dwconv(grid).flatten(2).transpose(1, 2)  # (B, h*w, 2C)
        out = self.pwconv2(y)  # (B, h*w, C)
        return torch.cat([torch.zeros_like(prefix), out], dim=1) if prefix.shape[1] else out
