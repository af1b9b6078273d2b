"""The one contract every token mixer follows.

A mixer is an ``nn.Module`` built by a factory (a ``functools.partial`` from its Hydra yaml) called as

    factory(dim=C, layout=TokenLayout(...), layer_index=i, num_layers=L) -> nn.Module

and its ``forward`` maps ``(B, N, C) -> (B, N, C)``, where ``N = layout.num_prefix + h * w``: the prefix
tokens (the CLS token, when the backbone has one) come first, then the ``h x w`` patch grid in row-major
order. Mixers that need the grid (spectral filters, pooling) read ``layout.grid``; mixers that are only
defined on patches pass the prefix tokens through unchanged and say so in their docstring.

Adding a mixer is one ``mixers/<family>.py`` and one ``conf/mixer/<name>.yaml``; nothing else changes.
A mixer whose parameters fix the token count checks ``layout`` in ``__init__`` and raises
:class:`mixerlab.errors.ConfigError` naming its config key, so a bad combination fails before any data
is loaded.

Pretrained weights (:mod:`mixerlab.pretrained`) load into a layer's mixer only when the checkpoint's mixer
for that layer is of the same *family*: a class attribute ``pretrained_family = "name"`` (attention and
Fibottention share ``"attention"``: the same ``qkv`` and ``proj``); a mixer without one is its own family.
A mixer of another family is initialised afresh while the block's norms and MLP load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mixerlab.errors import ConfigError


@dataclass(frozen=True)
class TokenLayout:
    """What a mixer may know about the token sequence it mixes."""

    grid: tuple[int, int]  # (h, w) patches
    num_prefix: int = 0  # tokens before the grid (1 with a CLS token)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches


def split_prefix(x: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, C) -> prefix (B, P, C), grid tokens (B, h*w, C)."""
    return x[:, : layout.num_prefix], x[:, layout.num_prefix :]


def check_fixed_tokens(expected: int | None, layout: TokenLayout, key: str) -> int:
    """Resolve a mixer's fixed token count: ``None`` takes the backbone's, a number must match it."""
    if expected is None:
        return layout.num_tokens
    if expected != layout.num_tokens:
        raise ConfigError(
            f"{key}={expected} but the backbone gives {layout.num_tokens} tokens "
            f"({layout.grid[0]}x{layout.grid[1]} patches + {layout.num_prefix} prefix); this mixer's weights "
            f"fix the token count: set {key}=null to follow data.img_size / backbone.patch_size, "
            "or change those"
        )
    return expected


def check_heads(dim: int, num_heads: int, key: str = "mixer.num_heads") -> None:
    """Multi-head mixers split the width into equal heads."""
    if num_heads < 1 or dim % num_heads:
        raise ConfigError(
            f"backbone.embed_dim={dim} is not divisible by {key}={num_heads}: "
            "choose a head count that divides the width"
        )


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast for a region that must run in float32 (FFTs), on any device type (also meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
