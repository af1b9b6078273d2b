"""Routing attention: content-based sparse attention through online k-means (Roy et al., TACL 2021,
arXiv 2003.05997; official TF google-research ``routing_transformer/utils.py``, image settings in
``sparse_image_transformer.py``; PyTorch lucidrains/routing-transformer ``routing_transformer.py``).

    q = k = x W_qk (shared), v = x W_v               each (B, h, N, d); q^ = q / |q|
    mu (h, c, d) unit centroids; cluster r takes its top-w tokens by <q^_i, mu_r>, w = N // c (balanced:
      a token lands in 0, 1 or several clusters)
    inside each cluster: softmax(q k^^T / sqrt(d)) v over its w tokens, k^ = k / |k|, self pair masked (-5e4)
    y_i = mean of token i's cluster outputs (0 if unrouted);  out = y W_o

Centroids are persistent buffers: on the first training batch, ``kmeans_init_iters`` (10) spherical k-means
iterations from c sampled tokens (sample drawn from ``seed`` and the layer index); then after every
training forward mu <- normalise(decay mu + (1 - decay) normalise(sum of the tokens assigned to mu)), decay
0.999 (clusters nobody chose keep theirs). The outer normalise keeps the centroids on the unit sphere the
routed q^ lie on (spherical k-means): an EMA of unit vectors shrinks towards the origin as its inputs spread,
which would bias the argmax assignment towards long centroids and put the norm into the commitment loss.
Sources differ here: lucidrains' ``Kmeans.update`` leaves the EMA unnormalised; the official TF
``online_kmeans`` (layer-normed items) keeps EMAs of per-cluster sums and counts and divides them. The
update is applied in the forward (lucidrains' RoutingTransformerLM applies it from a backward hook; the
same step). Under DDP the sums and counts are all-reduced first, so
every rank holds the same centroids. Commitment loss ``commitment`` (1e-4) x MSE(q^, mu_assigned) is set as
``aux_loss`` (the recipe adds it). All heads are routed (lucidrains' local heads are causal-only); c = null
gives round(sqrt(N)) clusters, so w ~ sqrt(N) and the cost is O(N^1.5 C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, all_reduce_sum_, check_heads, step_generator

SELF_LOGIT = -5e4  # lucidrains' TOKEN_SELF_ATTN_VALUE: a token attends to itself only if nothing else


def cluster_sums(points: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (h, P, d), means (h, c, d) -> per-cluster sums (h, c, d) and counts (h, c), all ranks."""
    assign = (points @ means.transpose(-2, -1)).argmax(-1)  # (h, P)
    sums = torch.zeros_like(means).scatter_add_(1, assign[..., None].expand_as(points), points)
    ones = torch.ones_like(assign, dtype=means.dtype)
    counts = means.new_zeros(means.shape[:2]).scatter_add_(1, assign, ones)
    all_reduce_sum_(sums, counts)
    return sums, counts


class RoutingAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 8,
        qkv_bias: bool = False,
        num_clusters: int | None = None,
        ema_decay: float = 0.999,
        commitment: float = 1e-4,
        kmeans_init_iters: int = 10,
        seed: int = 0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        n = layout.num_tokens
        clusters = round(math.sqrt(n)) if num_clusters is None else num_clusters
        if not 1 <= clusters <= n // 2:
            raise ConfigError(f"mixer.num_clusters={num_clusters}: each of the clusters takes N // c tokens "
                              f"and needs 2+ of the {n}; use 1..{n // 2} or null (round(sqrt(N)))")
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"mixer.ema_decay={ema_decay} must be in [0, 1) (official: 0.999)")
        if commitment < 0 or kmeans_init_iters < 0:
            raise ConfigError(f"mixer.commitment={commitment}, mixer.kmeans_init_iters={kmeans_init_iters}: "
                              "both must be non-negative")
        self.num_heads, self.window = num_heads, n // clusters
        self.ema_decay, self.commitment, self.init_iters = ema_decay, commitment, kmeans_init_iters
        self.seed, self.layer_index = seed, layer_index
        self.qk = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.register_buffer("means", F.normalize(torch.randn(num_heads, clusters, dim // num_heads), dim=-1))
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool))
        self.aux_loss: torch.Tensor | None = None

    @torch.no_grad()
    def kmeans_init(self, points: torch.Tensor) -> None:
        """Spherical k-means on the first training batch, points (h, P, d)."""
        c = self.means.shape[1]
        generator = step_generator(self.seed, self.layer_index, 0, torch.device("cpu"))
        n = points.shape[1]  # c distinct tokens, or with repeats when the batch has fewer than c
        pick = torch.randperm(n, generator=generator, device="cpu")[:c]
        pick = pick if len(pick) == c else torch.randint(n, (c,), generator=generator, device="cpu")
        means = points[:, pick.to(points.device)]
        all_reduce_sum_(means)
        means = F.normalize(means, dim=-1)
        for _ in range(self.init_iters):
            sums, counts = cluster_sums(points, means)
            means = torch.where(counts[..., None] > 0, F.normalize(sums, dim=-1), means)
        self.means.copy_(means)
        self.initted.fill_(True)

    @torch.no_grad()
    def ema_update(self, points: torch.Tensor) -> None:
        """One EMA step towards each chosen cluster's mean direction, then back onto the unit sphere."""
        sums, counts = cluster_sums(points, self.means)
        moved = self.ema_decay * self.means + (1 - self.ema_decay) * F.normalize(sums, dim=-1)
        moved = F.normalize(moved, dim=-1)
        self.means.copy_(torch.where(counts[..., None] > 0, moved, self.means))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h, d, w = self.num_heads, C // self.num_heads, self.window
        qk = self.qk(x).reshape(B, N, h, d).transpose(1, 2)  # (B, h, N, d), queries = keys
        v = self.v(x).reshape(B, N, h, d).transpose(1, 2)
        q_hat = F.normalize(qk, dim=-1)
        points = q_hat.detach().float().transpose(0, 1).reshape(h, B * N, d)  # (h, B*N, d)
        if self.training and not bool(self.initted):
            self.kmeans_init(points)
        with torch.no_grad():
            scores = q_hat @ self.means.to(q_hat.dtype).transpose(-2, -1)[None]  # (B, h, N, c)
            routes = scores.topk(w, dim=-2).indices.transpose(-2, -1).reshape(B, h, -1)  # (B, h, c*w)
        c = self.means.shape[1]
        q_r = qk.take_along_dim(routes[..., None], dim=2).reshape(B, h, c, w, d)
        v_r = v.take_along_dim(routes[..., None], dim=2).reshape(B, h, c, w, d)
        dots = q_r @ F.normalize(q_r, dim=-1).transpose(-2, -1) * d**-0.5  # (B, h, c, w, w)
        self_pair = torch.eye(w, dtype=torch.bool, device=x.device)
        attn = dots.masked_fill(self_pair, SELF_LOGIT).softmax(dim=-1)
        out = (attn @ v_r).reshape(B, h, c * w, d)
        index = routes[..., None].expand(-1, -1, -1, d)
        y = torch.zeros_like(v).scatter_add(2, index, out)  # (B, h, N, d): sum over the token's clusters
        count = y.new_zeros(B, h, N).scatter_add(2, routes, torch.ones_like(routes, dtype=y.dtype))
        y = y / count.clamp(min=1)[..., None]
        if self.training:
            assigned = self.means[torch.arange(h, device=x.device)[None, :, None], scores.argmax(-1)]
            self.aux_loss = self.commitment * F.mse_loss(q_hat, assigned.to(q_hat.dtype))
            self.ema_update(points)
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))
