"""Combiner-Fixed attention, non-causal (Ren et al., NeurIPS 2021, "Combiner: Full Attention Transformer
with Sparse Computation Cost", arXiv 2107.05768; official google-research/google-research
``combiner/combiner/jax/model/layer.py``, ``_SelfAttSqrtn``, a causal JAX layer, ported here by hand).

    q, k, v = x W_{q,k,v}, q scaled by d^-1/2          no biases (official); (B, H, M, d), M = n * s patches
    segments r of s consecutive tokens (default s = w: one grid row each)
    k~_r = max_{j in r} k_j                             max-pooled key summary
    v~_r = sum_{j in r} softmax_j((max_{j' in r} q_j') . k_j) v_j         attention-pooled value summary
    one joint softmax per query i over [q_i . k_j for j in seg(i)] + [q_i . k~_r for r != seg(i)]
    out_i = (sum_j a_ij v_j + sum_r a_ir v~_r) W_o      4C^2 parameters (no biases)

O(M (s + M/s) C): O(N^1.5 C) at s = sqrt(N). The official layer is causal (own-segment keys j <= i,
previous segments only); here every query sees its whole segment and every other segment's summary.
M must be divisible by s after the CLS token is split off (``mixer.segment_len``, checked at config time).

CLS handling (our choice; the paper has no CLS token): the CLS token is a segment of its own, of length 1,
whose summary is exactly its key and value, so every patch query has it in its joint softmax; the CLS query
attends densely to all N tokens (one query: O(N C), the read-out sees every patch directly).
"""

from __future__ import annotations

import torch
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads


class Combiner(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        segment_len: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        h, w = layout.grid
        segment_len = w if segment_len is None else segment_len
        if not isinstance(segment_len, int) or segment_len < 1 or layout.num_patches % segment_len:
            raise ConfigError(
                f"mixer.segment_len={segment_len!r} does not divide the {layout.num_patches} patch tokens "
                f"({h}x{w} grid, CLS split off): choose a divisor, e.g. null for one grid row ({w})"
            )
        self.layout, self.num_heads, self.segment_len = layout, num_heads, segment_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)  # inside the summaries' softmax, where the official drops
        self.proj = nn.Linear(dim, dim, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        P, H, s = self.layout.num_prefix, self.num_heads, self.segment_len
        q, k, v = self.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
        q = q * q.shape[-1] ** -0.5
        qs, ks, vs = (t[:, :, P:].unflatten(2, (-1, s)) for t in (q, k, v))  # (B, H, n, s, d)
        n = qs.shape[2]

        summary_q = qs.amax(dim=3, keepdim=True)  # (B, H, n, 1, d)
        pool = self.attn_drop(torch.softmax(summary_q @ ks.transpose(-2, -1), dim=-1))  # (B, H, n, 1, s)
        summary_v = (pool @ vs).squeeze(3)  # (B, H, n, d)
        summary_k = ks.amax(dim=3)  # (B, H, n, d)

        local = qs @ ks.transpose(-2, -1)  # (B, H, n, s, s): own segment, exact
        remote = qs @ summary_k.unsqueeze(2).transpose(-2, -1)  # (B, H, n, s, n): every segment's summary
        own = torch.eye(n, dtype=torch.bool, device=x.device).view(1, 1, n, 1, n)
        logits = [local, remote.masked_fill(own, float("-inf"))]  # own segment: exact keys, not its summary
        if P:  # CLS: a length-1 segment for the patch queries
            logits.append(qs @ k[:, :, :P].unsqueeze(2).transpose(-2, -1))  # (B, H, n, s, P)
        weights = torch.softmax(torch.cat(logits, dim=-1), dim=-1)  # one joint softmax
        out = weights[..., :s] @ vs + weights[..., s : s + n] @ summary_v.unsqueeze(2)
        if P:
            out = out + weights[..., s + n :] @ v[:, :, :P].unsqueeze(2)
        out = out.flatten(2, 3)  # (B, H, M, d)
        if P:  # the CLS query attends densely to every token
            cls = torch.softmax(q[:, :, :P] @ k.transpose(-2, -1), dim=-1) @ v  # (B, H, P, d)
            out = torch.cat([cls, out], dim=2)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
