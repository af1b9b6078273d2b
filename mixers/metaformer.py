"""The MetaFormer baselines: pooling (Yu et al. 2022, PoolFormer; sail-sg/poolformer), identity and frozen
random mixing (Yu et al. 2023, "MetaFormer Baselines for Vision": IdentityFormer, RandFormer;
sail-sg/metaformer).

    pooling:  out = AvgPool2d(3, stride 1, padding 1, count_include_pad=False)(x) - x     on (B, C, h, w)
    identity: out = x
    random:   out = R x,  R = softmax(rand(N, N)) frozen at initialisation                over the N tokens

None has trainable parameters. PoolFormer's block uses GroupNorm(1, C) and LayerScale 1e-5 on both branches
(``backbone.block.norm=groupnorm backbone.block.layer_scale=1e-5``); PoolFormer's own 4-stage model is the
preset ``experiment=poolformer_s12`` (and ``poolformerv2_s12``).

CLS handling: pooling is defined on the patch grid; a prefix token pools over itself alone, so its output
is 0 (the residual leaves it unchanged). Random mixing mixes all N tokens, prefix included, so its matrix
fixes N: ``num_tokens`` must equal the backbone's token count. R is a persistent buffer (saved in
checkpoints, not counted as a parameter, never optimised).
"""

from __future__ import annotations

import torch
from torch import nn

from mixers.contract import TokenLayout, check_fixed_tokens, split_prefix


class Pooling(nn.Module):
    """PoolFormer's mixer: average pooling over the patch grid minus the input; the CLS output is 0."""

    def __init__(
        self, dim: int, layout: TokenLayout, pool_size: int = 3, layer_index: int = 0, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.layout = layout
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = split_prefix(x, self.layout)
        B, N, C = tokens.shape
        grid = tokens.transpose(1, 2).reshape(B, C, *self.layout.grid)  # (B, C, h, w)
        out = (self.pool(grid) - grid).flatten(2).transpose(1, 2)  # (B, h*w, C)
        return torch.cat([torch.zeros_like(prefix), out], dim=1) if prefix.shape[1] else out


class IdentityMixer(nn.Module):
    """IdentityFormer's mixer: returns its input, so the block mixes no tokens."""

    def __init__(self, dim: int, layout: TokenLayout, layer_index: int = 0, num_layers: int = 1) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RandomMixing(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_tokens: int | None = None,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        tokens = check_fixed_tokens(num_tokens, layout, "mixer.num_tokens")
        self.register_buffer("random_matrix", torch.softmax(torch.rand(tokens, tokens), dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("mn,bnc->bmc", self.random_matrix.to(x.dtype), x)
