"""SG-Former (Ren, Yang, Liu, Wang, "SG-Former: Self-guided Transformer with Evolving Token Reallocation",
ICCV 2023, arXiv 2308.12216): a hierarchical backbone in which one block's attention tells the next block
which tokens matter (``backbone=sgformer``).

    image (B, 3, H, W) -> stem: 3 convs (3x3, s 2, 1, 2) + GroupNorm(1, C), GELU between -> LN -> + sin-cos
      -> stage i (grid h_i x w_i, width C_i; a stage after the first starts with PatchMerging, s 2):
           blocks, each  x + DropPath(attn(LN x)),  x + DropPath(MLP(LN x))
                         MLP: fc1 -> h + DWConv3x3(h) -> GELU -> fc2
           -> LN
      -> mean over tokens -> Linear  (``head=lama``: LAMA pooling instead, mixerlab/lama.py)

Stages with ``sr_ratio`` > 1 alternate two attentions; a stage with ``sr_ratio`` 1 has plain MHSA. Every
attention adds LePE = DWConv3x3(Linear(x)) to its output before the output projection.

* Hybrid-scale attention (even blocks): half of the heads attend globally, to the sr x sr-reduced grid
  (Conv k = s = sr -> LN -> GELU); the other half attend locally, inside non-overlapping ``window`` x
  ``window`` windows. It also returns the *significance map* (B, h, w): for every token, the attention it
  receives averaged over heads and queries, from the global half (nearest-upsampled from the reduced grid)
  plus the local half, detached.
* Self-guided attention (odd blocks): every head's queries are all tokens; keys and values are a
  reallocated sequence. The tokens are sorted by the map, least significant first, the sorted sequence is
  cut into slices in proportion to ``merge``'s shares, and every r consecutive tokens of a slice become one
  through a learned Linear(r -> 1) shared by all channels (:func:`reallocate`): unimportant regions are
  summarised coarsely, important ones kept nearly whole. This is done twice, on the row-major and the
  column-major flattening of the grid, and the two sequences feed the two halves of the heads.

The map goes from block to block through the block API: ``block(significance, x) -> (significance, x)``
(side stream first, tokens last, as TNT's blocks), threaded through every block of every stage as the
official ``forward_features`` threads its ``mask``. A hybrid-scale block replaces whatever map it gets, a
self-guided block consumes it, a plain block drops it.

Matches the official ``OliverRensu/SG-Former`` ``sgformer.py`` (commit b982803) in operators, schedule,
parameter counts (S 22,545,981, M 38,689,316, B 77,950,293: ``experiment=sgformer_{s,m,b}``), initialisation
(truncated normal 0.02 for Linears, normal sqrt(2 / fan_out) for convs, the position embedding set to
MAE's 2-D sin-cos and trainable) and weight decay (the position embedding is decayed: the official
``no_weight_decay`` names parameters that do not exist). Departures, none of which change a preset:

* the reallocation is configured (``backbone.stages[i].merge``: [share, r] per slice) where the official code
  keys three hard-coded tables on sr = 8, 4, 2, and the window size is ``backbone.window`` (officially 7),
  so small grids (the 16 px digits) can run SG-Former;
* the blocks alternate by position in their stage; the official code alternates by whether a map arrived,
  which fails when a stage with sr > 1 other than the third has an odd depth (a map reaches the next
  stage's first block); here that block is hybrid-scale and replaces the map;
* no attention-dropout option (the official presets use none); parameter names are ours (``reduce`` and
  ``reduce_norm`` are its ``sr`` and ``norm``, ``merge.k`` its ``f{k+1}``, ``lepe.linear`` / ``lepe.conv`` its
  ``lepe_linear`` / ``lepe_conv``: ``init.checkpoint`` renames an official file);
* the self-guided and plain attentions run SDPA; the hybrid-scale one keeps an explicit softmax, whose
  probabilities the map is made of.

The official files load through ``init.checkpoint`` (source ``sgformer`` in mixerlab/pretrained.py renames
them); with the official S, M and B modules' state dicts, their logits are reproduced to 1e-15 in float64.

SG-Former's attention is its own in every block (the map ties consecutive blocks together), so the run's
``mixer=`` has no slot here: it must stay ``attention``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from mixerlab.backbone import MixerFactory, StagedBlocks, classifier_head, mixers_no_weight_decay, read_out
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout

STAGE_KEYS = ("depth", "dim", "num_heads", "sr_ratio", "merge")
HEADS = ("gap", "lama")  # no CLS token: the official read-out is the token mean
ATTENTION = "mixers.attention.Attention"  # the only mixer= a run of this backbone may name


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(h*w, dim), tokens row-major, channels [sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)] for column c and row r,
    ω_k = 10000^(-k / (dim/4)): MAE's ``get_2d_sincos_pos_embed``, which the official code starts from."""
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device="cpu") / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64, device="cpu"),
                                torch.arange(w, dtype=torch.float64, device="cpu"), indexing="ij")
    parts = []
    for coord in (cols, rows):
        angles = coord.reshape(-1, 1) * omega  # (h*w, dim/4)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def to_windows(t: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """(B, heads, h*w, d) -> (B, heads, windows, window², d): windows row-major, tokens row-major inside."""
    B, H, _, d = t.shape
    h, w = grid
    t = t.reshape(B, H, h // window, window, w // window, window, d).permute(0, 1, 2, 4, 3, 5, 6)
    return t.reshape(B, H, (h // window) * (w // window), window * window, d)


def from_windows(t: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """(B, heads, windows, window², d) -> (B, h*w, heads*d): back to row-major tokens, channels head-major."""
    B, H, _, _, d = t.shape
    h, w = grid
    t = t.reshape(B, H, h // window, w // window, window, window, d).permute(0, 2, 4, 3, 5, 1, 6)
    return t.reshape(B, h * w, H * d)


def reallocate(
    tokens: torch.Tensor, significance: torch.Tensor, slices: Sequence[tuple[int, int]], merges: nn.ModuleList
) -> torch.Tensor:
    """Token reallocation: (B, N, C) tokens and their (B, N) significance -> (B, sum(n / r), C).

    The tokens are sorted by significance, least first (``torch.sort``, as the official code: not stable
    under ties), and the sorted sequence is cut into slices of n tokens; in a slice, every r consecutive
    tokens are merged into one by ``merges[k]``, a Linear(r -> 1) applied to each channel alike."""
    B, _, C = tokens.shape
    order = torch.sort(significance, dim=1).indices  # (B, N)
    ordered = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, C))
    out, start = [], 0
    for (n, r), merge in zip(slices, merges, strict=True):
        groups = ordered[:, start:start + n].reshape(B, n // r, r, C).transpose(2, 3)  # (B, n/r, C, r)
        out.append(merge(groups).squeeze(-1))  # (B, n/r, C)
        start += n
    return torch.cat(out, dim=1)


class LePE(nn.Module):
    """Locally-enhanced positional encoding: DWConv3x3(Linear(x)) on the grid, (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.linear = nn.Linear(dim, dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(to_grid(self.linear(x), self.grid)).flatten(2).transpose(1, 2)


class HybridScaleAttention(nn.Module):
    """Global heads over the sr-reduced grid + local heads in windows; returns the significance map."""

    def __init__(
        self, dim: int, num_heads: int, grid: tuple[int, int], sr_ratio: int, window: int, qkv_bias: bool,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads, self.grid, self.sr_ratio, self.window = num_heads, grid, sr_ratio, window
        self.scale = (dim // num_heads) ** -0.5
        self.reduce = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
        self.reduce_norm = nn.LayerNorm(dim)  # torch's eps 1e-5, as the official code (not the blocks' 1e-6)
        self.act = nn.GELU()
        self.q1 = nn.Linear(dim, dim // 2, bias=qkv_bias)  # the global half: C/2 of queries, C of keys+values
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
        self.q2 = nn.Linear(dim, dim // 2, bias=qkv_bias)  # the local half
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)
        self.lepe = LePE(dim, grid)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, significance: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (B, N, C) -> (B, N, C), map (B, h, w); a map given is replaced
        B, N, C = x.shape
        g, d = self.num_heads // 2, C // self.num_heads
        lepe = self.lepe(x)
        q1 = self.q1(x).reshape(B, N, g, d).transpose(1, 2)  # (B, g, N, d)
        reduced = self.act(self.reduce_norm(self.reduce(to_grid(x, self.grid)).flatten(2).transpose(1, 2)))
        k1, v1 = self.kv1(reduced).reshape(B, -1, 2, g, d).permute(2, 0, 3, 1, 4)  # (B, g, N / sr², d)
        attn1 = (q1 @ k1.transpose(-2, -1) * self.scale).softmax(dim=-1)  # (B, g, N, N / sr²)
        x1 = (attn1 @ v1).transpose(1, 2).reshape(B, N, C // 2)

        q2 = self.q2(x).reshape(B, N, g, d).transpose(1, 2)
        k2, v2 = self.kv2(x).reshape(B, N, 2, g, d).permute(2, 0, 3, 1, 4)
        q2, k2, v2 = (to_windows(t, self.grid, self.window) for t in (q2, k2, v2))  # (B, g, windows, w², d)
        attn2 = (q2 @ k2.transpose(-2, -1) * self.scale).softmax(dim=-1)  # (B, g, windows, w², w²)
        x2 = from_windows(attn2 @ v2, self.grid, self.window)  # (B, N, C/2)

        out = self.proj_drop(self.proj(torch.cat([x1, x2], dim=-1) + lepe))
        return out, self.significance(attn1.detach(), attn2.detach())

    def significance(self, attn_global: torch.Tensor, attn_local: torch.Tensor) -> torch.Tensor:
        """The attention each token receives, averaged over heads and queries: (B, h, w)."""
        (h, w), sr, win = self.grid, self.sr_ratio, self.window
        B = attn_global.shape[0]
        received = attn_global.mean(dim=(1, 2)).reshape(B, h // sr, 1, w // sr, 1)  # per reduced-grid key
        received = received.expand(-1, -1, sr, -1, sr).reshape(B, h, w)  # nearest upsampling by sr
        local = attn_local.mean(dim=(1, 3)).reshape(B, h // win, w // win, win, win)  # per key of each window
        return received + local.permute(0, 1, 3, 2, 4).reshape(B, h, w)


class SelfGuidedAttention(nn.Module):
    """All heads attend to the tokens reallocated by the previous block's significance map."""

    def __init__(
        self, dim: int, num_heads: int, grid: tuple[int, int], slices: Sequence[tuple[int, int]],
        qkv_bias: bool, proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads, self.grid, self.slices = num_heads, grid, [tuple(s) for s in slices]
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)  # the row-major reallocation: the first half of heads
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)  # from the column-major one: the second half
        self.merge = nn.ModuleList(nn.Linear(r, 1) for _, r in self.slices)  # shared by both reallocations
        self.lepe = LePE(dim, grid)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def num_kv_tokens(self) -> int:
        return sum(n // r for n, r in self.slices)

    def forward(self, x: torch.Tensor, significance: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        if significance is None:
            raise ValueError("a self-guided block needs the significance map of the hybrid-scale block "
                             "before it")
        B, N, C = x.shape
        (h, w), g, d = self.grid, self.num_heads // 2, C // self.num_heads
        lepe = self.lepe(x)
        by_rows = reallocate(x, significance.reshape(B, N), self.slices, self.merge)  # (B, M, C)
        x_by_cols = x.reshape(B, h, w, C).transpose(1, 2).reshape(B, N, C)
        by_cols = reallocate(x_by_cols, significance.transpose(1, 2).reshape(B, N), self.slices, self.merge)
        k1, v1 = self.kv1(by_rows).reshape(B, -1, 2, g, d).permute(2, 0, 3, 1, 4)  # (B, g, M, d)
        k2, v2 = self.kv2(by_cols).reshape(B, -1, 2, g, d).permute(2, 0, 3, 1, 4)
        q = self.q(x).reshape(B, N, self.num_heads, d).transpose(1, 2)  # (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, torch.cat([k1, k2], dim=1), torch.cat([v1, v2], dim=1))
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C) + lepe)), None


class PlainAttention(nn.Module):
    """MHSA with LePE (the stages with sr_ratio 1): separate q and kv projections, as the official code."""

    def __init__(
        self, dim: int, num_heads: int, grid: tuple[int, int], qkv_bias: bool, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.lepe = LePE(dim, grid)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, significance: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        B, N, C = x.shape
        d = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, d).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out + self.lepe(x))), None


class DWConvMlp(nn.Module):
    """fc1 -> h + DWConv3x3(h) -> GELU -> fc2 (the official ``Mlp``: the depthwise conv is a residual)."""

    def __init__(self, dim: int, hidden: int, grid: tuple[int, int], drop: float = 0.0) -> None:
        super().__init__()
        self.grid = grid
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x + self.dwconv(to_grid(x, self.grid)).flatten(2).transpose(1, 2))
        return self.drop(self.fc2(self.drop(x)))


class SGBlock(nn.Module):
    """Pre-norm block around one of the three attentions; passes the significance map on."""

    def __init__(
        self, dim: int, mixer: nn.Module, grid: tuple[int, int], mlp_ratio: float, drop_path: float,
        drop: float, norm_eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = DWConvMlp(dim, int(dim * mlp_ratio), grid, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # one module: both branches

    def forward(
        self, significance: torch.Tensor | None, x: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:  # map (B, h, w) or None, tokens (B, N, C)
        y, significance = self.mixer(self.norm1(x), significance)
        x = x + self.drop_path(y)
        return significance, x + self.drop_path(self.mlp(self.norm2(x)))


class ConvNorm(nn.Sequential):
    """Conv without bias + GroupNorm(1, C) (the official ``Conv2d_BN``, whose norm is a GroupNorm)."""

    def __init__(
        self, in_dim: int, out_dim: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(in_dim, out_dim, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.GroupNorm(1, out_dim),
        )


class ConvStem(nn.Module):
    """(B, 3, H, W) -> (B, ceil(H/4)·ceil(W/4), C): 3x3 convs with strides 2, 1, 2, then a LayerNorm."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvNorm(in_chans, dim, 3, 2), nn.GELU(), ConvNorm(dim, dim, 3, 1),
                                  nn.GELU(), ConvNorm(dim, dim, 3, 2))
        self.norm = nn.LayerNorm(dim)  # torch's eps, as the official stem

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(images).flatten(2).transpose(1, 2))


class PatchMerging(nn.Module):
    """Tokens at (h, w, C) -> (ceil(h/2), ceil(w/2), C'): 1x1 conv, GELU, depthwise 3x3 s 2, GELU, 1x1."""

    def __init__(self, in_dim: int, out_dim: int, in_grid: tuple[int, int]) -> None:
        super().__init__()
        self.in_grid = in_grid
        self.conv1 = ConvNorm(in_dim, out_dim)
        self.conv2 = ConvNorm(out_dim, out_dim, 3, 2, groups=out_dim)
        self.conv3 = ConvNorm(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(to_grid(x, self.in_grid))))))
        return x.flatten(2).transpose(1, 2)


class SGStage(nn.Module):
    def __init__(
        self, downsample: nn.Module, blocks: Sequence[SGBlock], norm: nn.Module, layout: TokenLayout
    ) -> None:
        super().__init__()
        self.layout = layout
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm

    def forward(
        self, significance: torch.Tensor | None, x: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        x = self.downsample(x)
        for block in self.blocks:
            significance, x = block(significance, x)
        return significance, self.norm(x)


def merge_slices(merge: object, num_tokens: int, key: str) -> list[tuple[int, int]]:
    """``[[share, r], ...]`` -> [(n, r), ...]: slice k holds num_tokens · share_k / sum(shares) sorted tokens,
    merged r_k at a time; every n must be a whole number of tokens and a multiple of its r."""
    pairs = merge if isinstance(merge, (list, tuple)) else []
    if not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in p) for p in pairs):
        raise ConfigError(f"{key}={merge!r} must be a list of [share, r] pairs of positive integers, e.g. "
                          "[[1, 49], [2, 14], [1, 7]]: the sorted tokens cut in proportion to the shares, "
                          "r tokens merged into one in each slice")
    total = sum(share for share, _ in pairs)
    slices = []
    for share, r in pairs:
        n = num_tokens * share // total
        if n * total != num_tokens * share or n % r:
            raise ConfigError(
                f"{key}={merge!r} does not cut this stage's {num_tokens} tokens evenly: a share of "
                f"{share}/{total} is {num_tokens * share / total:g} tokens, which must be a whole "
                f"multiple of r={r} (change the merge, or data.img_size)"
            )
        slices.append((n, r))
    return slices


class SGFormer(StagedBlocks, nn.Module):
    def __init__(
        self,
        mixer: MixerFactory,
        stages: Sequence[Mapping],
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        num_heads: int = 2,
        window: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        head: str = "gap",
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        lama_heads: int = 4,
        lama_context: str = "learned",
    ) -> None:
        """``stages``: one ``{depth, dim, num_heads?, sr_ratio, merge?}`` per stage, the first at the stem's
        grid (a quarter of the image's side). ``sr_ratio`` > 1: hybrid-scale and self-guided blocks
        alternate, the global heads attending to the grid reduced sr x sr, the self-guided keys and values
        reallocated as ``merge`` says ([share, r] per slice of the sorted tokens); ``sr_ratio`` 1: plain
        MHSA. ``num_heads``: the heads of a stage that names none (and what mixer presets read);
        ``window``: the local heads' window side; ``norm_eps``: the blocks' and stages' LayerNorms."""
        super().__init__()
        func = getattr(mixer, "func", mixer)  # Hydra's partial
        if f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}" != ATTENTION:
            raise ConfigError(
                "backbone=sgformer builds its own attention in every block (a significance map ties "
                "each pair of blocks together): the run's mixer= has no slot here; leave mixer=attention"
            )
        if head not in HEADS:
            raise ConfigError(f"backbone.head={head!r} must be one of {list(HEADS)} (SG-Former has no CLS "
                              "token)")
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"backbone.window={window!r} must be a positive integer")
        if not stages:
            raise ConfigError("backbone.stages is empty: give at least one {depth, dim, sr_ratio} stage")
        self.num_classes, self.img_size, self.head_type = num_classes, img_size, head
        specs = [self._stage_spec(i, dict(stage), num_heads) for i, stage in enumerate(stages)]
        if specs[0]["dim"] % 4:
            raise ConfigError(f"backbone.stages[0].dim={specs[0]['dim']} must be a multiple of 4 (the 2-D "
                              "sin-cos position embedding's four parts)")
        total = sum(spec["depth"] for spec in specs)
        drop_paths = torch.linspace(0, drop_path_rate, total, device="cpu").tolist()  # cpu: also on meta

        self.stem = ConvStem(in_chans, specs[0]["dim"])
        grid = ((img_size + 3) // 4, (img_size + 3) // 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], specs[0]["dim"]))
        built, prev_dim, index = [], specs[0]["dim"], 0
        for i, spec in enumerate(specs):
            dim = spec["dim"]
            down: nn.Module = nn.Identity()
            if i:
                down = PatchMerging(prev_dim, dim, grid)
                grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            attentions = self._attentions(i, spec, grid, window, qkv_bias, drop_rate)
            blocks = []
            for attention in attentions:
                blocks.append(SGBlock(dim, attention, grid, mlp_ratio, drop_paths[index], drop_rate,
                                      norm_eps))
                index += 1
            built.append(SGStage(down, blocks, nn.LayerNorm(dim, eps=norm_eps), TokenLayout(grid=grid)))
            prev_dim = dim
        self.stages = nn.ModuleList(built)
        self.layout = self.stages[0].layout  # the largest token grid
        self.head = classifier_head(head, prev_dim, num_classes, lama_heads, lama_context)
        self.apply(self._init_weights)
        with torch.no_grad():
            table = sincos_position_embedding(self.layout.grid, specs[0]["dim"])
            self.pos_embed.copy_(table.unsqueeze(0).to(self.pos_embed.device))

    @staticmethod
    def _stage_spec(i: int, stage: dict, num_heads: int) -> dict:
        key = f"backbone.stages[{i}]"
        unknown = set(stage) - set(STAGE_KEYS)
        if unknown:
            raise ConfigError(f"{key} has unknown keys {sorted(unknown)}; an SG-Former stage takes "
                              f"{', '.join(STAGE_KEYS)}")
        stage.setdefault("num_heads", num_heads)
        stage.setdefault("sr_ratio", 1)
        for name in ("depth", "dim", "num_heads", "sr_ratio"):
            value = stage.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}.{name}={value!r} must be a positive integer")
        if stage["dim"] % stage["num_heads"]:
            raise ConfigError(f"{key}.dim={stage['dim']} is not divisible by "
                              f"{key}.num_heads={stage['num_heads']}")
        if stage["sr_ratio"] > 1 and stage["num_heads"] % 2:
            raise ConfigError(f"{key}.num_heads={stage['num_heads']} must be even where sr_ratio > 1: "
                              "half of the heads attend globally, half locally")
        return stage

    @staticmethod
    def _attentions(
        i: int, spec: dict, grid: tuple[int, int], window: int, qkv_bias: bool, drop: float
    ) -> list[nn.Module]:
        """The stage's attentions in block order: hybrid-scale at even positions, self-guided at odd ones
        (where sr_ratio > 1), else plain MHSA."""
        key, (h, w) = f"backbone.stages[{i}]", grid
        dim, heads, sr, depth = spec["dim"], spec["num_heads"], spec["sr_ratio"], spec["depth"]
        if sr == 1:
            return [PlainAttention(dim, heads, grid, qkv_bias, drop) for _ in range(depth)]
        if h % sr or w % sr:
            raise ConfigError(f"{key}.sr_ratio={sr} does not divide this stage's {h}x{w} grid "
                              "(data.img_size / 4 at stage 1, halved at each later stage)")
        if h % window or w % window:
            raise ConfigError(f"backbone.window={window} does not divide the {h}x{w} grid of {key}: pick a "
                              "window that does, or another data.img_size")
        slices = merge_slices(spec.get("merge"), h * w, f"{key}.merge") if depth > 1 else []
        return [
            HybridScaleAttention(dim, heads, grid, sr, window, qkv_bias, drop) if j % 2 == 0
            else SelfGuidedAttention(dim, heads, grid, slices, qkv_bias, drop)
            for j in range(depth)
        ]

    @staticmethod
    def _init_weights(m: nn.Module) -> None:  # the official init: the convs' normal is over fan_out / groups
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Only mixers' own names: the position embedding is decayed, as in the official training (its
        ``no_weight_decay`` names ``pos_embed1..4``, which do not exist); 1-D parameters never are."""
        return mixers_no_weight_decay(self, set())

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise LR decay: the stem and position embedding, then each stage
        (coarse) or each downsampling layer and block, a stage's closing norm with its last block."""
        stem = r"^stem|^pos_embed"
        if coarse:
            return {"stem": stem, "blocks": r"^stages\.(\d+)"}
        return {"stem": stem, "blocks": [(r"^stages\.(\d+)\.downsample", (0,)),
                                         (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                         (r"^stages\.(\d+)\.norm", (99999,))]}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"the model was built for {self.img_size}x{self.img_size} images (data.img_size) "
                f"but got {tuple(images.shape[-2:])}"
            )
        x = self.stem(images) + self.pos_embed  # (B, h1*w1, C1)
        significance = None  # crosses stage borders, as the official forward_features' mask does
        for stage in self.stages:
            significance, x = stage(significance, x)  # (B, h_i*w_i, C_i)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return read_out(self.head_type, self.head, self.forward_features(images))
