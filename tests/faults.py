"""Faults injected into real training runs from the command line, for the sweep tests.

    +callbacks.fault._target_=tests.faults.InjectNonFinite +callbacks.fault.at_step=2 \
    +callbacks.fault.only_in="'seed=1'"

Both callbacks act only while the environment variable ``MIXERLAB_TEST_FAULTS`` is set, so a test can run
the same sweep command again (same overrides, so the same sweep directory) without the fault.
Resume tests SIGKILL a run at a chosen point with ``KillAt``:
``+callbacks.kill._target_=tests.faults.KillAt +callbacks.kill.step=7`` (with ``only_in``: that job of a
sweep alone, and only while armed).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch

ENV = "MIXERLAB_TEST_FAULTS"


def _armed(trainer: L.Trainer, only_in: str | None) -> bool:
    """Armed by the environment, and (``only_in``) in the job whose run directory has that name."""
    return bool(os.environ.get(ENV)) and (not only_in or Path(trainer.default_root_dir).name == only_in)


class InjectNonFinite(L.Callback):
    """Fill the images of the batch at ``at_step`` with NaN (``target=batch``), or the first weight
    (``target=weights``), so that step's loss is NaN."""

    def __init__(self, at_step: int = -1, target: str = "batch", only_in: str | None = None) -> None:
        self.at_step, self.target, self.only_in = at_step, target, only_in

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step != self.at_step or not _armed(trainer, self.only_in):
            return
        if self.target == "batch":
            batch[0].fill_(float("nan"))
        else:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class PauseAtEpoch(L.Callback):
    """At the start of ``epoch`` (after the previous epoch's checkpoint), touch ``MIXERLAB_TEST_FAULTS``'s
    file and wait: the test kills the sweep there, as a crash or a preemption would."""

    def __init__(self, epoch: int = 1, only_in: str | None = None, seconds: float = 300.0) -> None:
        self.epoch, self.only_in, self.seconds = epoch, only_in, seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch or not _armed(trainer, self.only_in):
            return
        Path(os.environ[ENV]).write_text(trainer.default_root_dir)
        time.sleep(self.seconds)


class KillAt(L.Callback):
    """SIGKILL (no clean-up, no handler runs) when ``global_step == step`` at ``hook``.

    hook: ``batch_start`` (before that step's batch runs: mid-epoch, between checkpoints),
    ``batch_end`` (after the step and after any checkpoint written at it), ``validation`` (in the
    middle of the epoch-end validation).
    """

    def __init__(self, step: int, hook: str = "batch_start", rank: int = 0,
                 only_in: str | None = None) -> None:
        if hook not in ("batch_start", "batch_end", "validation"):
            raise ValueError(f"KillAt hook={hook!r}")
        self.step, self.hook, self.rank, self.only_in = step, hook, rank, only_in

    def _maybe_kill(self, trainer, hook: str) -> None:
        if self.only_in and not _armed(trainer, self.only_in):  # one job of a sweep, while armed
            return
        if hook == self.hook and trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "batch_end")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 1:
            self._maybe_kill(trainer, "validation")


class StepClock(L.Callback):
    """Replace the recipe's clock with one that advances one second per training batch, from ``start``
    seconds: a run's images/s is then exactly the images per batch, whatever the machine's speed, and a
    timer started at the wrong moment shows (``start`` is far from zero on purpose)."""

    def __init__(self, start: float = 10_000.0) -> None:
        self.now = start

    def setup(self, trainer, pl_module, stage: str) -> None:
        import types

        import mixerlab.recipe

        mixerlab.recipe.time = types.SimpleNamespace(perf_counter=lambda: self.now)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.now += 1.0
