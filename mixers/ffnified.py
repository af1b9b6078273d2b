"""FFNified attention, MetaMixer's token mixer (Yun, Lee, Ro 2024, FFNet, arXiv 2406.02021;
ysj9909/FFNet ``models/ffnet.py``: ``Token_Mixer``, ``RepVGGDW``, ``Conv2d_BN``).

    on the patch grid (B, C, h, w):   y = DW_k2(GELU(DW_k1(BN(Conv1x1(x)))))
    k = 3: DW = depthwise k x k conv with bias
    k = 7: DW = RepVGGDW = BN(DW_7x7(x)) + BN(DW_3x3(x))      (two branches, fusable into one 7x7 conv)

Parameters C^2 + 22C (k = 3) or C^2 + 126C (k = 7). FFNet's blocks have no pre-norm (the BN is inside); here
the mixer sits in the backbone's block like any other. Its convolutions start as FFNet's (trunc-normal 0.02,
bias 0: ``reset_mixer_parameters``). The CLS token cannot enter the convolutions: it passes through
unchanged. BatchNorm: its training output depends on the batch, and its running statistics are persistent
buffers, so checkpoints carry them. DDP: plain BatchNorm2d, each device normalising with its own batch, as
FFNet trains (timm's train.py, ``--sync-bn`` off by default); DDP's ``broadcast_buffers`` gives every rank
rank 0's running statistics at each forward (FFNet's ``--dist-bn reduce`` averages them per epoch instead).

Deployment form (FFNet's ``Conv2d_BN.fuse`` and ``RepVGGDW.fuse``): with BatchNorm's running statistics fixed,
each conv + BN is one conv with bias, and RepVGGDW's two branches are one 7x7 depthwise conv (the 3x3 kernel
zero-padded to 7x7 and added). Training keeps the branches, whose sum trains differently from a single 7x7
kernel; evaluation and inference timing use the fused convs (``mixers.contract.fuse_for_inference``), which
give the same outputs as the branches in eval mode, in one conv per depthwise layer instead of two.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, split_prefix


class ConvBN(nn.Sequential):
    """FFNet's ``Conv2d_BN``: a bias-free conv then BatchNorm (BN weight 1, bias 0)."""

    def __init__(self, dim: int, kernel_size: int, groups: int) -> None:
        conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=groups, bias=False)
        super().__init__(OrderedDict(c=conv, bn=nn.BatchNorm2d(dim)))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """One conv with bias equal to conv then BN with its running statistics (eval mode):
        W' = W * gamma / sqrt(var + eps),  b' = beta - mean * gamma / sqrt(var + eps)."""
        c, bn = self.c, self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()  # (C,)
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, padding=c.padding, groups=c.groups)
        fused.to(c.weight)
        fused.weight.copy_(c.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


def conv_bn(dim: int, kernel_size: int, groups: int) -> ConvBN:
    return ConvBN(dim, kernel_size, groups)


class RepVGGDW(nn.Module):
    """BN(DW_k(x)) + BN(DW_{k//2}(x)): FFNet's large-kernel depthwise conv with a small parallel branch."""

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = conv_bn(dim, kernel_size, groups=dim)
        self.conv1 = conv_bn(dim, kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """The deployment form: both branches folded into one k x k depthwise conv with bias (the small
        kernel zero-padded to k x k, centred, so it sees the same neighbours)."""
        big, small = self.conv.fuse(), self.conv1.fuse()
        pad = (big.kernel_size[0] - small.kernel_size[0]) // 2
        big.weight.add_(F.pad(small.weight, [pad] * 4))
        big.bias.add_(small.bias)
        return big


def depthwise(dim: int, kernel_size: int) -> nn.Module:
    if kernel_size == 7:
        return RepVGGDW(dim, kernel_size)
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)


class FFNified(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        kernel_size: int = 3,
        kernel_size2: int | None = None,
        use_gelu: bool = True,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        kernel_size2 = kernel_size if kernel_size2 is None else kernel_size2
        for key, k in (("mixer.kernel_size", kernel_size), ("mixer.kernel_size2", kernel_size2)):
            if k not in (3, 7):
                raise ConfigError(f"{key}={k}: FFNet's token mixer uses 3 (depthwise) or 7 (RepVGGDW)")
        self.layout = layout
        self.fc = conv_bn(dim, 1, groups=1)
        self.conv1 = depthwise(dim, kernel_size)
        self.act = nn.GELU() if use_gelu else nn.ReLU()
        self.conv2 = depthwise(dim, kernel_size2)

    def reset_mixer_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = split_prefix(x, self.layout)  # (B, P, C), (B, h*w, C)
        B, n, C = patches.shape
        grid = patches.transpose(1, 2).reshape(B, C, *self.layout.grid)  # (B, C, h, w)
        y = self.conv2(self.act(self.conv1(self.fc(grid))))  # (B, C, h, w)
        out = y.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out
