"""LAMA: a low-rank, global-context, multi-head attentive read-out (``backbone.head=lama``).

Mehta, Rangwala & Ramakrishnan, "Compact Multi-Head Self-Attention for Learning Supervised Text
Representations" (arXiv 1912.00835). A read-out, not a mixer: it maps the final tokens (B, N, C) to m pooled
vectors (B, m, C), which the classifier reads flattened (Linear(m*C, classes)), as the paper's structured
embedding M is flattened into its classifier. For m heads, with P, Q in R^{C x m} and a context c in R^C:

    c~  = P^T c                                    (m,)       the context, one score per head
    u~_t = Q^T x_t                                  (B, N, m)  each token, one score per head
    f_t = l2-normalise_over_heads( tanh(c~ * u~_t) )  (B, N, m)  head i: tanh((p_i.c)(q_i.x_t)), rank 1
    A   = softmax_over_tokens(f)                    (B, m, N)
    M   = A X                                       (B, m, C)

2Cm parameters (+ C for a learned c); O(N C m) per image.

Choices where the paper's body was not available (the operator is read from its Figure 1 and an unofficial
re-implementation; see the project's MIXERS-III notes):

- **u_t = x_t.** Figure 1 passes the encoder states through an MLP first; here the tokens are already the
  output of a LayerNorm'd transformer, so they are scored directly (as the re-implementation does).
- **Softmax over tokens after the l2 norm.** The l2 norm over heads is in the figure; the softmax is the
  re-implementation's, so each head's weights over the tokens sum to one (an average, as GAP is).
  Scores lie in [-1, 1], so one head's weights differ at most e^2 ~ 7.4x between tokens.
- **c**, ``backbone.lama_context``: ``learned`` (default; a free vector, as Figure 1 draws c apart from
  the inputs; initialised N(0, 1), the scale of a LayerNorm'd token) or ``mean`` (the mean of the tokens,
  the re-implementation's "LAMA + ctx"). With a learned c, P^T c is just a learned m-vector, but P is kept
  so both variants hold the same 2Cm weights.
- **Masking**: none, every token takes part (prefix tokens too, when the backbone has them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.errors import ConfigError

CONTEXTS = ("learned", "mean")


class LamaPooling(nn.Module):
    """(B, N, C) -> (B, m, C): m attention-weighted averages of the tokens (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int = 4, context: str = "learned") -> None:
        super().__init__()
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ConfigError(f"backbone.lama_heads={num_heads!r} must be a positive integer")
        if context not in CONTEXTS:
            raise ConfigError(f"backbone.lama_context={context!r} must be one of {list(CONTEXTS)}")
        self.num_heads = num_heads
        self.context_type = context
        self.proj_context = nn.Linear(dim, num_heads, bias=False)  # P
        self.proj_tokens = nn.Linear(dim, num_heads, bias=False)  # Q
        self.context = nn.Parameter(torch.randn(dim)) if context == "learned" else None

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention A (B, m, N) of each head over the tokens."""
        c = self.context if self.context is not None else x.mean(dim=1)  # (C,) or (B, C)
        c = self.proj_context(c).reshape(-1, 1, self.num_heads)  # (1 or B, 1, m)
        f = F.normalize(torch.tanh(c * self.proj_tokens(x)), dim=-1)  # (B, N, m), unit norm over heads
        return f.transpose(1, 2).softmax(dim=-1)  # (B, m, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x) @ x  # (B, m, C)


class LamaHead(nn.Module):
    """LAMA pooling, then a Linear classifier on the flattened (m*C) pooled vectors."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 4, context: str = "learned") -> None:
        super().__init__()
        self.pool = LamaPooling(dim, num_heads, context)
        self.fc = nn.Linear(num_heads * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))  # (B, m, C) -> (B, m*C) -> (B, classes)
