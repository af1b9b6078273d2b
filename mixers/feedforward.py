"""Feed-forward over patches (Melas-Kyriazi 2021, "Do You Even Need Attention?";
lukemelas/do-you-even-need-attention ``vision_transformer_linear.py``).

The attention layer is replaced by an MLP applied along the token axis, shared across channels:

    x: (B, T, C) -> (B, C, T)
    y = Linear(4T -> T)(GELU(Linear(T -> 4T)(LayerNorm_T(x))))     LayerNorm over the T tokens
    out = y -> (B, T, C)

The LayerNorm belongs to the mixer because it normalises over tokens, not channels; the block therefore
runs with ``block.mixer_norm=false`` (no channel LayerNorm in front of the mixer) and, as in the paper,
``block.order=mlp_first`` (feature MLP, then token MLP). The CLS token is mixed like any other token.
``T`` is fixed by the weights: ``num_tokens`` must equal the backbone's token count (197 for 224/16 + CLS).
The token LayerNorm's ``norm_eps`` follows the backbone's (the official code builds both norms from one
``partial(nn.LayerNorm, eps=1e-6)``).

The same file holds the paper's other ablation, the attention-only model (section 3.4), whose feature MLP
is replaced by attention *over features*: each channel is a sequence element described by its T token
values, so the attention map is C x C (:class:`FeatureAttention`, again with its own LayerNorm over T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_fixed_tokens


class TokenMLP(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_tokens: int | None = None,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        norm_eps: float = 1e-5,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        tokens = check_fixed_tokens(num_tokens, layout, "mixer.num_tokens")
        self.norm = nn.LayerNorm(tokens, eps=norm_eps)
        self.mlp = Mlp(tokens, int(tokens * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, C, T): each channel is one sample of the token MLP
        return self.mlp(self.norm(x)).transpose(1, 2)


class FeatureAttention(nn.Module):
    """Self-attention whose sequence elements are the C channels, each a T-dimensional vector of tokens.

    Our reading of the attention-only ablation (the report gives no code): the mirror image of
    :class:`TokenMLP`, with a LayerNorm over tokens and ``num_heads`` heads over the T-dimensional
    embedding (T = 197 is prime, so one head at 224 px).
    """

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_tokens: int | None = None,
        num_heads: int = 1,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        tokens = check_fixed_tokens(num_tokens, layout, "mixer.num_tokens")
        if tokens % num_heads:
            raise ConfigError(
                f"feature attention embeds the {tokens} tokens, which num_heads={num_heads} does not divide: "
                "pick a head count that divides the token count (1 always works)"
            )
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(tokens, eps=norm_eps)
        self.qkv = nn.Linear(tokens, 3 * tokens, bias=qkv_bias)
        self.proj = nn.Linear(tokens, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.transpose(1, 2))  # (B, C, T): C sequence elements of width T
        B, C, T = x.shape
        qkv = self.qkv(x).reshape(B, C, 3, self.num_heads, T // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, C, T/h)
        y = F.scaled_dot_product_attention(q, k, v)  # C x C attention per head
        y = y.transpose(1, 2).reshape(B, C, T)
        return self.proj(y).transpose(1, 2)
