"""Checkpoints a run can always resume from exactly: written atomically, loaded without pickle.

A run keeps one resumable checkpoint, ``<run>/checkpoints/last.ckpt``, rewritten every N optimizer steps
and at every epoch end. It holds everything the rest of the run depends on: model and EMA weights,
optimizer, LR schedule, the loops' position (Lightning), the data order's position
(:meth:`data.base.ImageDataModule.state_dict`) and every rank's RNG states (:mod:`mixerlab.randomness`).

Why not Lightning's own pieces as they come:

- ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in ``/tmp``; when
  the run directory is on another file system (a cluster's shared disk) the final move is a copy, so a kill
  in the middle leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target,
  fsyncs and renames, so a reader sees the old file or the new one, never half of one.
- ``ModelCheckpoint`` cannot save both every N steps and every epoch (the two are mutually exclusive).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from mixerlab.errors import DamagedFileError
from mixerlab.storage import disk_full, load_torch_file

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the target's directory, fsync, rename; ``torch.load`` with
    ``weights_only=True``, so loading a checkpoint never runs pickled code.

    Our checkpoints hold only tensors, containers and primitives (RNG states are stored as tensors and
    tuples of ints), which is what ``weights_only=True`` accepts.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as error:
            Path(tmp).unlink(missing_ok=True)  # frees the space a full disk's summary and log line need
            full = disk_full(error, path)
            if full is not None:  # the previous checkpoint at ``path`` is untouched: the run resumes from it
                raise full from None
            raise
        _fsync_directory(path.parent)  # make the rename itself durable

    def load_checkpoint(
        self, path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError("mixerlab checkpoints load with weights_only=True only")
        return load_checkpoint_file(path, map_location)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync directories; the rename is still atomic
    finally:
        os.close(fd)


class RunCheckpoint(Checkpoint):
    """Rewrites ``dirpath/last.ckpt`` every ``every_n_steps`` optimizer steps and at every epoch end.

    Being a :class:`Checkpoint`, Lightning runs its ``on_train_epoch_end`` after the LightningModule's, so the
    epoch-end checkpoint already holds that epoch's history row. ``every_n_steps=0``: epoch ends only.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0) -> None:
        if every_n_steps < 0:
            raise ValueError(f"callbacks.checkpoint.every_n_steps={every_n_steps}: use 0 (epoch ends) or 1+")
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self._last_saved_step = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now (every rank calls this: the checkpoint gathers per-rank state)."""
        trainer.save_checkpoint(self.last_path, weights_only=False)  # False: the full training state
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and step != self._last_saved_step:  # with accumulation, several batches end at one step
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.save(trainer)


RESUME_FIX = ("checkpoints are written atomically, so it was damaged after it was written: restore it from a "
              "copy, or move it aside to start the run afresh (only the newest checkpoint is kept)")


def load_checkpoint_file(path: Path | str, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, or a :class:`~mixerlab.errors.DamagedFileError` naming it and what to do.
    What it must hold is Lightning's to check (its keys) and :func:`checkpoint_step`'s before a resume."""
    checkpoint = load_torch_file(path, "run checkpoint", RESUME_FIX, map_location=map_location)
    if not isinstance(checkpoint, dict):
        raise DamagedFileError(f"run checkpoint: {path} holds a {type(checkpoint).__name__}, not a "
                               f"checkpoint; {RESUME_FIX}")
    return checkpoint


def checkpoint_step(path: Path | str) -> int:
    """The optimizer step a checkpoint was written at (memory-mapped: the weights are not read); a damaged
    checkpoint raises a DamagedFileError naming it."""
    checkpoint = load_torch_file(path, "run checkpoint", RESUME_FIX, mmap=True)
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise DamagedFileError(f"run checkpoint: {path} is a torch file but not a run checkpoint (no "
                               f"global_step); {RESUME_FIX}")
    return int(checkpoint["global_step"])
