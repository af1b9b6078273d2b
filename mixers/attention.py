"""Multi-head self-attention (Vaswani et al. 2017; ViT/DeiT), optionally stochastically subsampled (SSA).

    q, k, v = x W_qkv            (B, N, C) -> 3 x (B, h, N, C/h)
    y = softmax(q k^T / sqrt(C/h)) v
    out = y W_o

Head dim 64 in DeiT (Ti 3 heads, S 6, B 12), qkv with bias. ``head_dim=d`` fixes the head width instead
of the head count (heads = C / d): CAFormer's attention stages (Yu et al. 2023, "MetaFormer Baselines for
Vision"; timm ``metaformer.py`` Attention) use d = 32 at every width, without qkv or projection bias
(``qkv_bias=false proj_bias=false``). The product runs through
``torch.nn.functional.scaled_dot_product_attention`` so the fused CPU/flash/efficient kernels apply.

SSA (Hussain, Zaki, Subramanian, KDD 2023, arXiv 2306.01705; ``shamim-hussain/ssa`` holds no code, so this is
written from the paper's description), ``ssa={factor: s, local_bias: bool}``, in training only:

- unbiased: per sample, a random permutation of the n patch keys, the first ceil(n/s) kept, shared by every
  query and head: y = softmax(q k_S^T / sqrt(d)) v_S, cost O(N^2 C / s).
- local_bias: per sample, a locality-biased shuffle of the patch tokens -- sort by i + w u_i, u_i ~ U(0, 1),
  i the row-major patch index, w = ceil(n/s) the window -- so a token moves about one window from its place;
  then block-diagonal attention: each window of w consecutive shuffled tokens attends within itself. Our
  reading: the noise scale is one window, and locality is that of the row-major sequence (windows are bands
  of neighbouring rows).
- prefix (CLS) tokens are global: kept as keys in every subset and window; in local_bias mode their queries
  attend to all keys (one query, O(N)), in unbiased mode to the shared subset like every query.

Evaluation and ``set_dense(True)`` (the recipe's dense fine-tune, ``recipe.dense_finetune_epochs``) run the
dense path unchanged. The draws come from a generator seeded by (``seed``, layer index, ``ssa_step``), a
persistent buffer counting SSA training forwards: no hidden RNG state, DDP ranks draw alike, and a resumed
run replays the same subsets. Self-ensembling (SSA at inference) is not offered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads

SSA_OPTIONS = {"factor", "local_bias"}


def check_ssa(ssa: Mapping | None) -> dict | None:
    if ssa is None:
        return None
    ssa = dict(ssa)
    if set(ssa) - SSA_OPTIONS or "factor" not in ssa:
        raise ConfigError(f"mixer.ssa={ssa}: give {{factor: s, local_bias: bool}} (null turns SSA off)")
    if not isinstance(ssa["factor"], int | float) or ssa["factor"] < 1:
        raise ConfigError(f"mixer.ssa.factor={ssa['factor']!r} must be a number >= 1 (keys kept: N / factor)")
    return {"factor": float(ssa["factor"]), "local_bias": bool(ssa.get("local_bias", False))}


class Attention(nn.Module):
    # timm's ViT/DeiT attention has these parameters under these names (mixerlab/pretrained.py)
    pretrained_family = "attention"

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
        ssa: Mapping | None = None,
        seed: int = 0,
        head_dim: int | None = None,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        if head_dim is not None:  # the head width is fixed, the head count follows the width
            if head_dim < 1 or dim % head_dim:
                raise ConfigError(
                    f"width {dim} is not a multiple of mixer.head_dim={head_dim}: heads = width / head_dim"
                )
            num_heads = dim // head_dim
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.layout, self.layer_index, self.seed = layout, layer_index, int(seed)
        self.ssa = check_ssa(ssa)
        self.dense = False
        if self.ssa is not None:  # only then: dense attention's state dict (and weight digests) unchanged
            self.register_buffer("ssa_step", torch.zeros(1, dtype=torch.long))  # 1-D: digests view bytes

    def set_dense(self, dense: bool) -> bool:
        """Train-time-only options off (the recipe's dense fine-tune stage); whether this layer has any."""
        self.dense = bool(dense)
        return self.ssa is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        drop = self.attn_drop if self.training else 0.0
        if self.ssa is not None and self.training and not self.dense:
            y = self._subsampled(q, k, v, drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))

    def _generator(self) -> torch.Generator:
        step = int(self.ssa_step)
        self.ssa_step += 1
        seed = np.random.SeedSequence([self.seed, self.layer_index, step]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def _subsampled(self, q, k, v, drop: float) -> torch.Tensor:
        B, h, N, d = q.shape
        P = self.layout.num_prefix
        n = N - P
        window = max(1, math.ceil(n / self.ssa["factor"]))  # keys each query sees
        noise = torch.rand(B, n, generator=self._generator()).to(q.device)
        if not self.ssa["local_bias"]:
            keep = noise.argsort(-1)[:, :window]  # (B, w): first w of a random permutation
            idx = torch.cat([torch.arange(P, device=q.device).expand(B, P), P + keep], 1)[:, None, :, None]
            k_s, v_s = (t.gather(2, idx.expand(B, h, -1, d)) for t in (k, v))  # (B, h, P + w, d)
            return F.scaled_dot_product_attention(q, k_s, v_s, dropout_p=drop)
        order = (torch.arange(n, device=q.device) + window * noise).argsort(-1)  # (B, n) biased shuffle
        windows = math.ceil(n / window)
        pad = windows * window - n
        gather = order[:, None, :, None].expand(B, h, n, d)

        def shuffled(t: torch.Tensor) -> torch.Tensor:  # (B, h, N, d) -> (B, h, windows, window, d)
            t = F.pad(t[:, :, P:].gather(2, gather), (0, 0, 0, pad))
            return t.reshape(B, h, windows, window, d)

        (pk, pv) = (t[:, :, :P, None].expand(B, h, P, windows, d).transpose(2, 3) for t in (k, v))
        k_w = torch.cat([pk, shuffled(k)], 3)  # (B, h, windows, P + window, d): prefix keys in every window
        v_w = torch.cat([pv, shuffled(v)], 3)
        valid = torch.ones(windows * window, dtype=torch.bool, device=q.device)
        valid[n:] = False  # padded keys of the last window
        mask = torch.cat([valid.new_ones(windows, P), valid.reshape(windows, window)], 1)[:, None, :]
        # windows folded into the batch of heads: the fused 4-D SDPA kernels apply
        y_w = F.scaled_dot_product_attention(
            *(t.flatten(1, 2) for t in (shuffled(q), k_w, v_w)), attn_mask=mask.repeat(h, 1, 1),
            dropout_p=drop,
        ).reshape(B, h, windows * window, d)
        y_patch = torch.empty_like(q[:, :, P:]).scatter_(2, gather, y_w[:, :, :n])
        y_prefix = F.scaled_dot_product_attention(q[:, :, :P], k, v, dropout_p=drop)  # CLS: dense, O(N)
        return torch.cat([y_prefix, y_patch], 2)
