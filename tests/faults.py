"""Fault injection for the resume tests: a callback that SIGKILLs its own process at a chosen point.

Used as a Hydra override, e.g. ``+callbacks.kill._target_=tests.faults.KillAt +callbacks.kill.step=7``.
"""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """SIGKILL (no clean-up, no handler runs) when ``global_step == step`` at ``hook``.

    hook: ``batch_start`` (before that step's batch runs: mid-epoch, between checkpoints),
    ``batch_end`` (after the step and after any checkpoint written at it), ``validation`` (in the
    middle of the epoch-end validation).
    """

    def __init__(self, step: int, hook: str = "batch_start", rank: int = 0) -> None:
        if hook not in ("batch_start", "batch_end", "validation"):
            raise ValueError(f"KillAt hook={hook!r}")
        self.step, self.hook, self.rank = step, hook, rank

    def _maybe_kill(self, trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "batch_end")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 1:
            self._maybe_kill(trainer, "validation")
