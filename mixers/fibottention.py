"""Fibottention (Rahimian et al. 2024, arXiv 2406.19391; Charlotte-CharMLab/Fibottention ``fibottention.py``).

Multi-head attention where head i (1..h) only sees patch pairs whose distance along the flattened 1-D patch
index is one of its Fibonacci-like offsets:

    phi = golden ratio, wmin = 5, wmax = N // 3                       N patches (CLS excluded)
    a_i = floor(floor(i phi) phi),  b_i = floor(floor(i phi) phi^2)   (Wythoff array row starts)
    w_i = wmin + int((wmax - wmin) / (h - 1) * (i - 1))               window of head i
    O_i = a_i, b_i, a_i + b_i, ...  up to the last term <= w_i        (a_i always kept; no offset 0)
    mask_i[r, r +- o] = 1 for o in O_i;  CLS row and column all ones
    heads are shuffled per layer: random.seed(layer_index); random.shuffle(masks)

Two variants (``variant``):

* ``faithful`` -- as the published code: logits are *multiplied* by the 0/1 mask before the softmax, so
  masked pairs get logit 0 (not -inf) and the compute stays dense. (The official code also caches one head
  permutation for all layers and, under torch >= 2, its fused attention path skips the mask entirely; we
  apply the mask as written, with the per-layer shuffle above.)
* ``sparse`` -- true -inf masking: ``softmax`` over the kept pairs only, so masked work can be skipped.
  Backends (``sparse_backend``):
    ``flex``      ``torch.nn.attention.flex_attention`` with a ``BlockMask``; compiled on CUDA, where
                  masked blocks are skipped. In torch 2.15 FlexAttention has no CPU backward, so a CPU call
                  that needs gradients falls back to ``dense`` and says so once.
    ``diagonal``  each kept pair lies on one of 2|O_i| diagonals of head i, so the logits are computed per
                  diagonal from shifted keys: O(N |O_i| d) work and memory per head, never an N x N matrix.
    ``dense``     ``scaled_dot_product_attention`` with the boolean mask (the reference; O(N^2)).
    ``auto``      ``flex`` on CUDA, ``diagonal`` elsewhere.
  A query row with no kept key (a head whose smallest offset exceeds the grid) outputs 0, as FlexAttention
  defines it, in every backend.
"""

from __future__ import annotations

import math
import random
import warnings
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads

PHI = (1 + math.sqrt(5)) / 2
VARIANTS = ("faithful", "sparse")
BACKENDS = ("auto", "flex", "diagonal", "dense")


def fibonacci_offsets(
    num_patches: int, num_heads: int, wmin: int = 5, wmax: int | None = None, include_self: bool = False
) -> list[list[int]]:
    """Per-head offsets O_1..O_h (unshuffled), as in the module docstring."""
    wmax = num_patches // 3 if wmax is None else wmax
    offsets = []
    for i in range(1, num_heads + 1):
        row = math.floor(i * PHI)
        a, b = math.floor(row * PHI), math.floor(row * PHI**2)
        window = wmin + int((wmax - wmin) / (num_heads - 1) * (i - 1)) if num_heads > 1 else wmax
        sequence = [a, b]
        while sequence[-1] <= window:
            sequence.append(sequence[-1] + sequence[-2])
        offsets.append(([0] if include_self else []) + sequence[:-1])
    return offsets


def shuffled_heads(offsets: list[list[int]], layer_index: int) -> list[list[int]]:
    """The per-layer head permutation of the official code (``random.seed(layer); random.shuffle``)."""
    shuffled = list(offsets)
    random.Random(layer_index).shuffle(shuffled)
    return shuffled


def offset_table(offsets: list[list[int]], num_patches: int) -> torch.Tensor:
    """(h, N) bool: ``table[i, d]`` is True when head i keeps patch pairs at distance d."""
    table = torch.zeros(len(offsets), num_patches, dtype=torch.bool)
    for head, head_offsets in enumerate(offsets):
        kept = [o for o in head_offsets if o < num_patches]
        table[head, kept] = True
    return table


def fibottention_mask(offsets: list[list[int]], num_patches: int, num_prefix: int = 0) -> torch.Tensor:
    """(h, P+N, P+N) bool mask: patch pairs at a kept distance, and every pair involving a prefix token."""
    index = torch.arange(num_patches)
    distance = (index[:, None] - index[None, :]).abs()
    patches = offset_table(offsets, num_patches)[:, distance]  # (h, N, N)
    mask = torch.ones(len(offsets), num_prefix + num_patches, num_prefix + num_patches, dtype=torch.bool)
    mask[:, num_prefix:, num_prefix:] = patches
    return mask


def kept_fraction(offsets: list[list[int]], num_patches: int) -> float:
    """Fraction of patch-patch pairs (over all heads) that the masks keep."""
    n = num_patches
    kept = sum(2 * (n - o) if o else n for head in offsets for o in head if o < n)
    return kept / (len(offsets) * n**2)


@cache
def _flex_api():
    """(flex_attention, create_block_mask), or None where this torch has no FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return flex_attention, create_block_mask


@cache
def _compiled_flex():
    # FlexAttention only skips masked blocks when compiled; eager mode runs a dense reference.
    return torch.compile(_flex_api()[0], dynamic=False)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


class Fibottention(nn.Module):
    # its weights are attention's (qkv, proj): pretrained attention loads into it (mixerlab/pretrained.py)
    pretrained_family = "attention"

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        variant: str = "faithful",
        sparse_backend: str = "auto",
        wmin: int = 5,
        wmax: int | None = None,
        include_self: bool = False,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"mixer.variant={variant!r} is not one of {list(VARIANTS)}")
        if sparse_backend not in BACKENDS:
            raise ConfigError(f"mixer.sparse_backend={sparse_backend!r} is not one of {list(BACKENDS)}")
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.variant = variant
        self.sparse_backend = sparse_backend
        self.layout = layout
        n = layout.num_patches
        self.offsets = shuffled_heads(fibonacci_offsets(n, num_heads, wmin, wmax, include_self), layer_index)
        self.register_buffer("table", offset_table(self.offsets, n), persistent=False)
        # N x N masks are built on first use, per device: the diagonal backend never needs one
        self._dense_masks: dict = {}
        self._block_masks: dict = {}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        if self.variant == "faithful":
            y = self._faithful(q, k, v)
        else:
            y = getattr(self, f"_{self.backend_for(q)}")(q, k, v)
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))

    def backend_for(self, q: torch.Tensor) -> str:
        """The sparse backend this call runs on (see the module docstring)."""
        backend = self.sparse_backend
        if backend == "auto":
            return "flex" if q.is_cuda and _flex_api() is not None else "diagonal"
        if backend == "flex":
            if _flex_api() is None:
                _warn_once("Fibottention: this torch has no FlexAttention; using dense masked attention")
                return "dense"
            if not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
                _warn_once(
                    "Fibottention: FlexAttention has no CPU backward; using dense masked attention to train "
                    "on CPU (mixer.sparse_backend=diagonal is the sparse CPU path)"
                )
                return "dense"
        return backend

    def dense_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(h, P+N, P+N) bool mask of this layer (heads already shuffled)."""
        device = torch.device(device)
        if device not in self._dense_masks:
            mask = fibottention_mask(self.offsets, self.layout.num_patches, self.layout.num_prefix)
            self._dense_masks[device] = mask.to(device)
        return self._dense_masks[device]

    # -- variants and backends; all take and return (B, h, N, d)
    def _faithful(self, q, k, v):
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, h, N, N)
        logits = logits * self.dense_mask(q.device)  # masked pairs get logit 0, as published
        return logits.softmax(dim=-1) @ v

    def _dense(self, q, k, v):
        mask = self.dense_mask(q.device)
        empty = ~mask.any(dim=-1, keepdim=True)  # rows with no kept key attend anywhere, then output 0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty)
        return y.masked_fill(empty, 0.0)

    def _flex(self, q, k, v):
        flex_attention, create_block_mask = _flex_api()
        block_mask = self._block_masks.get(q.device)
        if block_mask is None:
            prefix, table = self.layout.num_prefix, self.table
            last = table.shape[1] - 1

            def mask_mod(b, h, q_idx, kv_idx):
                distance = (q_idx - kv_idx).abs().clamp(max=last)
                return (q_idx < prefix) | (kv_idx < prefix) | table[h, distance]

            n = q.shape[2]
            block_mask = create_block_mask(mask_mod, None, self.num_heads, n, n, device=q.device)
            self._block_masks[q.device] = block_mask
        attend = _compiled_flex() if q.is_cuda else flex_attention
        return attend(q, k, v, block_mask=block_mask)

    def _diagonal(self, q, k, v):
        prefix = self.layout.num_prefix
        n = q.shape[2] - prefix
        positions = torch.arange(n, device=q.device)
        heads = []
        for h, head_offsets in enumerate(self.offsets):
            shifts = tuple(s for o in head_offsets if o < n for s in ((o,) if o == 0 else (o, -o)))
            qh = (q[:, h, prefix:] * q.shape[-1] ** -0.5).contiguous()  # (B, n, d) patch queries
            kh, vh = k[:, h, prefix:].contiguous(), v[:, h, prefix:].contiguous()
            logits = ShiftedDot.apply(qh, kh, shifts)  # (B, n, K): one column per diagonal
            target = positions[:, None] + torch.tensor(shifts, device=q.device, dtype=torch.long)
            outside = (target < 0) | (target >= n)  # (n, K) neighbours beyond the sequence
            if prefix:
                logits = torch.cat([logits, qh @ k[:, h, :prefix].transpose(-2, -1)], dim=-1)
                outside = F.pad(outside, (0, prefix), value=False)
            elif not shifts:
                heads.append(torch.zeros_like(qh))
                continue
            else:
                # a row with no neighbour keeps one out-of-range slot (logit 0, value 0): its output is 0
                outside[:, 0] &= ~outside.all(dim=-1)
            attn = logits.masked_fill(outside, float("-inf")).softmax(dim=-1)  # (B, n, K [+ P])
            out = ShiftedSum.apply(attn[..., : len(shifts)].contiguous(), vh, shifts)
            if prefix:
                out = out + attn[..., len(shifts) :] @ v[:, h, :prefix]
            heads.append(out)
        patches = torch.stack(heads, dim=1)  # (B, h, n, d)
        if not prefix:
            return patches
        prefix_rows = F.scaled_dot_product_attention(q[:, :, :prefix], k, v)  # CLS attends to every token
        return torch.cat([prefix_rows, patches], dim=2)


def _overlap(n: int, shift: int) -> tuple[int, int]:
    """Rows r with 0 <= r + shift < n."""
    return max(0, -shift), min(n, n - shift)


class ShiftedDot(torch.autograd.Function):
    """``out[b, r, j] = <q[b, r], k[b, r + shifts[j]]>`` (0 where r + shift leaves the sequence).

    Written out with its backward so that no (n, n) or (n, K, d) tensor is ever built and the gradients
    accumulate in place, one diagonal at a time.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(q, k)
        ctx.shifts = shifts
        B, n, _ = q.shape
        out = q.new_zeros(B, n, len(shifts))
        for j, s in enumerate(shifts):
            r0, r1 = _overlap(n, s)
            out[:, r0:r1, j] = (q[:, r0:r1] * k[:, r0 + s : r1 + s]).sum(-1)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k = ctx.saved_tensors
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
        n = q.shape[1]
        for j, s in enumerate(ctx.shifts):
            r0, r1 = _overlap(n, s)
            g = grad[:, r0:r1, j, None]
            dq[:, r0:r1].addcmul_(g, k[:, r0 + s : r1 + s])
            dk[:, r0 + s : r1 + s].addcmul_(g, q[:, r0:r1])
        return dq, dk, None


class ShiftedSum(torch.autograd.Function):
    """``out[b, r] = sum_j p[b, r, j] * v[b, r + shifts[j]]`` (terms leaving the sequence are dropped)."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, v: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(p, v)
        ctx.shifts = shifts
        out = torch.zeros_like(v)
        n = v.shape[1]
        for j, s in enumerate(shifts):
            r0, r1 = _overlap(n, s)
            out[:, r0:r1].addcmul_(p[:, r0:r1, j, None], v[:, r0 + s : r1 + s])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, v = ctx.saved_tensors
        dp, dv = torch.zeros_like(p), torch.zeros_like(v)
        n = v.shape[1]
        for j, s in enumerate(ctx.shifts):
            r0, r1 = _overlap(n, s)
            dp[:, r0:r1, j] = (grad[:, r0:r1] * v[:, r0 + s : r1 + s]).sum(-1)
            dv[:, r0 + s : r1 + s].addcmul_(p[:, r0:r1, j, None], grad[:, r0:r1])
        return dp, dv, None
