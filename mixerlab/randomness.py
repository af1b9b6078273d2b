"""Training randomness that replays exactly after a resume, on every rank.

Before each training batch, :class:`StepSeeding` seeds torch (CPU and CUDA), numpy and Python's ``random``
from ``(run seed, epoch, batch index, rank)``. Dropout, drop-path and Mixup then draw the same numbers in
an uninterrupted run and in a run resumed from any checkpoint, however many numbers were drawn elsewhere
in between -- and something always is: a DataLoader draws a base seed from the global generator each time
an iterator is created, which a resumed process does at other moments than an uninterrupted one. Ranks
get different streams (different dropout masks per rank, as they should).

Checkpoints also record every rank's RNG states at save time (``checkpoint["rng_states"]``, one entry per
rank, tensors and tuples only so ``weights_only=True`` loads them) and a resumed rank restores its own,
so randomness outside training batches continues where it was too.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A 32-bit seed that differs for every (seed, epoch, batch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(1)[0])


@functools.cache
def _mps_available() -> bool:
    return torch.backends.mps.is_available()


def seed_all(seed: int) -> None:
    """Seed torch (CPU, and CUDA / MPS where in use), numpy and ``random``: what ``torch.manual_seed`` does
    for the devices in use, without its lazy seeding of CUDA devices not yet initialised, which formats the
    caller's stack each time (0.15-0.5 ms a training step, more the deeper Lightning's stack)."""
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():  # a model on a GPU has initialised CUDA before its first batch
        torch.cuda.manual_seed_all(seed)
    if _mps_available():
        torch.mps.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_states() -> dict[str, Any]:
    """This process's RNG states as tensors, ints and tuples (read by ``weights_only=True`` loading)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
        "numpy": (torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


class StepSeeding(Callback):
    """Seeds each training batch from (seed, epoch, batch, rank); checkpoints keep all ranks' RNG states."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        seed_all(step_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        # every rank is in here (Trainer.save_checkpoint runs on all of them); rank 0 writes the file
        states = rng_states()
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list = [None] * trainer.world_size
            dist.all_gather_object(gathered, states)
        else:
            gathered = [states]
        checkpoint["rng_states"] = gathered

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states") or []
        if len(states) == trainer.world_size:
            set_rng_states(states[trainer.global_rank])
