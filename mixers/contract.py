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

Beyond ``forward``, a mixer may use four mechanisms (all optional):

- **Auxiliary losses.** During a training forward a module sets ``self.aux_loss`` to a scalar tensor,
  already weighted (routing attention's commitment loss). The recipe calls :func:`pop_aux_losses` after the
  forward, adds the sum to the training loss and logs it as ``train/aux_loss``.
- **Optimizer groups.** :func:`mark_optim` tags a parameter with ``_optim = {"weight_decay": w,
  "lr_scale": s}``; the recipe's optimizer groups parameters by (weight decay, LR scale) and honours the
  tag (timm's schedulers multiply a group's LR by its ``lr_scale``). ``no_weight_decay()`` names still work.
- **Non-parameter state** (random features, k-means centroids, step counters) lives in *persistent
  buffers*, so checkpoints and the weights digest cover it. Per-step randomness comes from
  :func:`step_generator` (seed, layer index, step counter): no hidden RNG state, every rank draws the same
  numbers, a resumed run replays exactly. State updated from data is summed across ranks with
  :func:`all_reduce_sum_` before it is applied. Buffers that must not be averaged by the recipe's weight
  EMA (a random matrix) are named in the module's ``ema_copy_buffers``; :func:`copy_unaveraged_buffers`
  copies them instead.
- **Precision.** Regions that need float32 under bf16 autocast (FFTs, exponentials of random features,
  pseudo-inverses) run inside :func:`autocast_off` on ``.float()`` inputs and cast back to the input dtype.
Pretrained weights (:mod:`mixerlab.pretrained`) load into a layer's mixer only when the checkpoint's mixer
for that layer is of the same *family*: a class attribute ``pretrained_family = "name"`` (attention and
Fibottention share ``"attention"``: the same ``qkv`` and ``proj``); a mixer without one is its own family.
A mixer of another family is initialised afresh while the block's norms and MLP load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

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


def pop_aux_losses(model: nn.Module) -> torch.Tensor | None:
    """Sum of every module's ``aux_loss`` set during the last forward (each reset to None); None if none."""
    total = None
    for module in model.modules():
        loss = getattr(module, "aux_loss", None)
        if loss is not None:
            total = loss if total is None else total + loss
            module.aux_loss = None
    return total


OPTIM_KEYS = ("weight_decay", "lr_scale")


def mark_optim(param: nn.Parameter, weight_decay: float | None = None, lr_scale: float | None = None) -> None:
    """Give a parameter its own weight decay and/or LR multiplier in the recipe's optimizer."""
    tags = dict(getattr(param, "_optim", {}))
    if weight_decay is not None:
        tags["weight_decay"] = float(weight_decay)
    if lr_scale is not None:
        tags["lr_scale"] = float(lr_scale)
    param._optim = tags


def step_generator(seed: int, layer_index: int, step: int, device: torch.device) -> torch.Generator:
    """A generator that is a function of (seed, layer, step) alone: same numbers on every rank and resume."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((int(seed) * 1_000_003 + int(layer_index)) * 1_000_003 + int(step)) % 2**63)
    return generator


def all_reduce_sum_(*tensors: torch.Tensor) -> None:
    """Sum tensors over all ranks in place when running distributed (data-updated state, e.g. centroids)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


def copy_unaveraged_buffers(ema_model: nn.Module, model: nn.Module) -> None:
    """After an EMA update, copy the buffers each module names in ``ema_copy_buffers`` (not averageable)."""
    for ema_module, module in zip(ema_model.modules(), model.modules(), strict=True):
        for name in getattr(module, "ema_copy_buffers", ()):
            getattr(ema_module, name).copy_(getattr(module, name))
def set_dense(model: torch.nn.Module, dense: bool) -> int:
    """Turn train-time-only mixer options off (``dense=True``) or back on, e.g. SSA's key subsampling.

    A module that may have such an option exposes ``set_dense(bool) -> bool`` (True: it has one); the
    recipe's dense fine-tune stage (``recipe.dense_finetune_epochs``) calls this on the backbone at each
    training epoch's start, so a resumed run sets the same flag. Evaluation never uses the options.
    Returns the number of modules that have one.
    """
    switched = 0
    for module in model.modules():
        if module is not model and callable(getattr(module, "set_dense", None)):
            switched += bool(module.set_dense(dense))
    return switched


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The model in its deployment form, for evaluation and inference timing, never for training.

    A module whose eval-mode computation has a cheaper equal form (e.g. FFNified's RepVGG branches and
    conv + BatchNorm pairs folded into single convs) exposes ``fuse() -> nn.Module``, timm's convention:
    timm's ``reparameterize_model`` replaces each such module by what its ``fuse()`` returns. The result
    is in eval mode: fused BatchNorms use the running statistics they had. ``inplace=False`` fuses a copy.
    """
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model, inplace=inplace).eval()
