"""NaN/Inf guards: stop (or skip the step) on a non-finite loss, and never checkpoint non-finite weights.

``recipe.nan_policy``: ``stop`` (default) ends the run with :class:`NonFiniteError` naming the step, so a
sweep records the job as failed with that message; ``skip`` drops the step (no backward, no update) and
counts it. Either way the last checkpoint written is the last good one: a checkpoint is refused while any
weight is non-finite.
"""

from __future__ import annotations

import torch
from torch import nn

from mixerlab.errors import NonFiniteError

NAN_POLICIES = ("stop", "skip")


def loss_is_finite(loss: torch.Tensor, strategy=None) -> bool:
    """True when the loss is finite on every rank: ranks must agree, or one would skip a step the others take
    and the collectives would hang."""
    finite = bool(torch.isfinite(loss.detach()).all())
    if strategy is not None and getattr(strategy, "world_size", 1) > 1:
        finite = strategy.reduce_boolean_decision(finite, all=True)
    return finite


def nonfinite_loss_message(loss: torch.Tensor, step: int, epoch: int, batch_idx: int, policy: str) -> str:
    value = loss.detach().float().flatten()[0].item() if loss.numel() else float("nan")
    where = f"at step {step} (epoch {epoch}, batch {batch_idx})"
    if policy == "skip":
        return f"non-finite loss ({value}) {where}: step skipped (recipe.nan_policy=skip)"
    return (f"non-finite loss ({value}) {where}: run stopped; the last checkpoint written before it is kept. "
            "Lower recipe.lr, enable recipe.clip_grad, or set recipe.nan_policy=skip to skip such steps")


def check_finite_weights(module: nn.Module, step: int) -> None:
    """Raise before a checkpoint with non-finite weights replaces the last good one."""
    bad = [name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise NonFiniteError(
            f"non-finite weights at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
            "checkpoint not written, the last good checkpoint is kept")
