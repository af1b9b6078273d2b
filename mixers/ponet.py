"""Pooling network token mixer, PoNet (Tan et al., ICLR 2022, arXiv 2110.02442; official lxchtan/PoNet
``models/modeling_ponet.py`` ``PoNetSelfAttention`` and, for the segment rule, the LRA code
``examples/LRA/code/attention_ponet.py``).

    Q, K, O, S, L = x W_{q,k,o,s,l} + b                 five Linear(C, C); V is tied to K; H heads of d
    g  = mean_i Q_i;  a = softmax_j(g . K_j / sqrt(d));  g' = sum_j a_j K_j     global attention pooling
    s_i = max_{j in seg(i)} S_j                          segment max-pool, broadcast inside the segment
    l_i = max_{|j - i| <= 1} L_j                         local max-pool, kernel 3
    out_i = ((g' + s_i) * O_i + l_i) W_out + b           6C^2 + 6C parameters per layer

Linear in N. Segments follow the LRA code: ``segment_len = M // segment_num + 1`` over the M patch tokens,
so with ``segment_num`` = grid rows (the default, as the LRA image task's 32 segments of a 32x32 image) the
segments straddle rows, and the kernel-3 pool runs over the flattened sequence, wrapping across rows.
``grid_aware=true`` reads ``layout.grid`` instead: a segment is one grid row and the local pool is 3x3 on
the grid. The reference is a BERT post-LN sub-layer, LN(x + out): ``backbone.block.style=postnorm``.

CLS handling, as the reference's ``clsgsepg`` rule: a prefix (CLS) token enters the global pooling like any
token but stays out of both max-pools (no patch sees it there) and gets only the global term,
out_cls = (g' * O_cls) W_out + b. The max-pools are hand-written (``scatter_reduce`` amax and torch's
max-pool) because the official code needs ``torch_scatter``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads


def segment_index(layout: TokenLayout, segment_num: int | None, grid_aware: bool) -> torch.Tensor:
    """Segment id of each patch token (M,): grid rows, or the LRA code's ``i // (M // segment_num + 1)``.
    Ids are contiguous from 0, so the segment count is the last id + 1."""
    h, w = layout.grid
    if grid_aware:
        if segment_num not in (None, h):
            raise ConfigError(
                f"mixer.segment_num={segment_num} with mixer.grid_aware=true: the segments are the {h} grid "
                "rows; set mixer.segment_num=null, or mixer.grid_aware=false for the official segments"
            )
        return torch.arange(h * w, device="cpu") // w
    segment_num = h if segment_num is None else segment_num
    if not isinstance(segment_num, int) or not 1 <= segment_num <= h * w:
        raise ConfigError(
            f"mixer.segment_num={segment_num!r} must be an integer from 1 to the {h * w} patch tokens "
            "(null: one segment per grid row)"
        )
    return torch.arange(h * w, device="cpu") // (h * w // segment_num + 1)


class PoNet(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        segment_num: int | None = None,
        grid_aware: bool = False,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.layout, self.num_heads, self.grid_aware = layout, num_heads, grid_aware
        segments = segment_index(layout, segment_num, grid_aware)  # on the CPU, also when built on meta
        self.num_segments = int(segments[-1]) + 1
        self.register_buffer("segments", segments.to(torch.get_default_device()), persistent=False)
        self.q, self.k, self.o, self.segment, self.local = (nn.Linear(dim, dim) for _ in range(5))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, H, N, d)
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        P, (h, w) = self.layout.num_prefix, self.layout.grid
        q, k, o = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.o(x))
        g = q.mean(dim=2, keepdim=True)  # (B, H, 1, d), CLS included
        a = torch.softmax(g @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-1)  # (B, H, 1, N)
        g_pooled = a @ k  # (B, H, 1, d), V tied to K

        S, L = self.segment(x[:, P:]), self.local(x[:, P:])  # (B, M, C): patches only
        index = self.segments.view(1, -1, 1).expand_as(S)
        seg_max = S.new_zeros(B, self.num_segments, C).scatter_reduce(1, index, S, "amax", include_self=False)
        seg = seg_max.gather(1, index)  # (B, M, C), each token's segment max
        if self.grid_aware:
            loc = F.max_pool2d(L.transpose(1, 2).reshape(B, C, h, w), 3, 1, 1).flatten(2).transpose(1, 2)
        else:  # the official kernel-3 pool over the flattened sequence
            loc = F.max_pool1d(L.transpose(1, 2), 3, 1, 1).transpose(1, 2)
        seg, loc = F.pad(seg, (0, 0, P, 0)), F.pad(loc, (0, 0, P, 0))  # CLS: no segment or local term

        out = (g_pooled + self.heads(seg)) * o + self.heads(loc)  # (B, H, N, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
