"""Checkpoints a run can always resume from exactly: written atomically, loaded without pickle.

A run keeps its resumable checkpoint in ``<run>/checkpoints/last.ckpt``, rewritten every N optimizer steps
and at every epoch end, and (``callbacks.checkpoint.keep_previous``, on by default) the checkpoint that the
last rewrite replaced, as ``previous.ckpt``. A checkpoint holds everything the rest of the run depends on:
model and EMA weights, optimizer, LR schedule, the loops' position (Lightning), the data order's position
(:meth:`data.base.ImageDataModule.state_dict`) and every rank's RNG states (:mod:`mixerlab.randomness`).
A resume takes the newest of the two that loads (:func:`resume_point`) and says so when it passes over a
damaged ``last.ckpt``.

Why not Lightning's own pieces as they come:

- ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in ``/tmp``; when
  the run directory is on another file system (a cluster's shared disk) the final move is a copy, so a kill
  in the middle leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target,
  fsyncs and renames, so a reader sees the old file or the new one, never half of one.
- ``ModelCheckpoint`` cannot save both every N steps and every epoch (the two are mutually exclusive).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from mixerlab.errors import DamagedFileError
from mixerlab.run import LAST_CHECKPOINT, PREVIOUS_CHECKPOINT
from mixerlab.storage import disk_full, load_torch_file

log = logging.getLogger("mixerlab")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the target's directory, fsync, rename; ``torch.load`` with
    ``weights_only=True``, so loading a checkpoint never runs pickled code.

    Our checkpoints hold only tensors, containers and primitives (RNG states are stored as tensors and
    tuples of ints), which is what ``weights_only=True`` accepts.

    ``storage_options={"previous": PATH}``: once the new file is whole on disk, and just before it replaces
    the one at ``path``, that one becomes ``PATH`` (:func:`keep_as_previous`); a save that fails changes
    neither.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        options = dict(storage_options or {})
        previous = options.pop("previous", None)
        if options:
            raise TypeError(f"{type(self).__name__} takes storage_options={{'previous': PATH}} only, not "
                            f"{sorted(options)}")
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
            if previous is not None and path.is_file():
                keep_as_previous(path, Path(previous))
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
    """Rewrites ``dirpath/last.ckpt`` every ``every_n_steps`` optimizer steps and at every epoch end; with
    ``keep_previous``, the checkpoint each rewrite replaces stays as ``dirpath/previous.ckpt``.

    Being a :class:`Checkpoint`, Lightning runs its ``on_train_epoch_end`` after the LightningModule's, so the
    epoch-end checkpoint already holds that epoch's history row. ``every_n_steps=0``: epoch ends only.
    ``keep_previous`` costs one more checkpoint on disk (no copy is written: the replaced file keeps a second
    name); turn it off where two checkpoints of a big model, plus the one being written, do not fit.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, keep_previous: bool = True) -> None:
        if every_n_steps < 0:
            raise ValueError(f"callbacks.checkpoint.every_n_steps={every_n_steps}: use 0 (epoch ends) or 1+")
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.keep_previous = bool(keep_previous)
        self._last_saved_step = -1
        # checkpoints a resume passed over as damaged: set aside, never overwritten, at the first save
        self.damaged: list[Path] = []

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST_CHECKPOINT

    @property
    def previous_path(self) -> Path:
        return self.dirpath / PREVIOUS_CHECKPOINT

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now (every rank calls this: the checkpoint gathers per-rank state)."""
        if trainer.is_global_zero:  # the one process that writes the file
            for path in self.damaged:  # a damaged last.ckpt is not kept as previous.ckpt: set it aside
                if path.is_file():
                    kept = set_aside_damaged(path)
                    log.warning("run checkpoint: the damaged %s is kept as %s", path, kept.name)
            self.damaged = []
        options = {"previous": self.previous_path} if self.keep_previous else None
        # weights_only=False: the full training state
        trainer.save_checkpoint(self.last_path, weights_only=False, storage_options=options)
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and step != self._last_saved_step:  # with accumulation, several batches end at one step
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.save(trainer)


def keep_as_previous(last: Path, previous: Path) -> None:
    """Make ``previous`` the file ``last`` is now, just before a new file is renamed over ``last``.

    A hard link: no byte is copied, and once the new file replaces ``last`` the old one lives on as
    ``previous``; at every moment both names hold a whole checkpoint. Where the file system has no hard
    links, ``last`` is renamed instead: for the instant until the next rename the run has ``previous``
    alone, which :func:`resume_point` takes."""
    for stale in last.parent.glob(f".{previous.name}.*.tmp"):  # left by a process killed right here
        stale.unlink(missing_ok=True)
    link = last.parent / f".{previous.name}.{os.getpid()}.tmp"
    try:
        os.link(last, link)
    except OSError as error:
        full = disk_full(error, previous)
        if full is not None:
            raise full from None
        os.replace(last, previous)
        return
    os.replace(link, previous)


def set_aside_damaged(path: Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged`` (``.damaged.2``, ... if taken): out of the way
    of the next save and of every later resume, and still there to be looked at."""
    target, n = path.with_name(f"{path.name}.damaged"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged.{n}")
    os.replace(path, target)
    return target


RESUME_FIX = ("checkpoints are written atomically, so it was damaged after it was written: restore it from a "
              "copy, or move it aside to start the run afresh")


def load_checkpoint_file(path: Path | str, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, or a :class:`~mixerlab.errors.DamagedFileError` naming it and what to do.
    What it must hold is Lightning's to check (its keys) and :func:`checkpoint_step`'s before a resume."""
    checkpoint = load_torch_file(path, "run checkpoint", RESUME_FIX, map_location=map_location)
    if not isinstance(checkpoint, dict):
        raise DamagedFileError(f"run checkpoint: {path} holds a {type(checkpoint).__name__}, not a "
                               f"checkpoint; {RESUME_FIX}")
    return checkpoint


def checkpoint_step(path: Path | str, fix: str = RESUME_FIX) -> int:
    """The optimizer step a checkpoint was written at (memory-mapped: the weights are not read); a damaged
    checkpoint raises a DamagedFileError naming it and saying ``fix``."""
    checkpoint = load_torch_file(path, "run checkpoint", fix, mmap=True)
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise DamagedFileError(f"run checkpoint: {path} is a torch file but not a run checkpoint (no "
                               f"global_step); {fix}")
    return int(checkpoint["global_step"])


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run goes on from, its step, and the newer checkpoints passed over: (path, what is
    wrong with it)."""

    path: Path
    step: int
    passed_over: tuple[tuple[Path, str], ...] = ()

    def fallback_line(self) -> str:
        """One line: which checkpoint did not load, why, and which one is used instead."""
        wrong = "; ".join(f"{path} {why}" for path, why in self.passed_over)
        return (f"run checkpoint: {wrong}; going on from the newest checkpoint that loads, {self.path} "
                f"(step {self.step})")


def resume_point(checkpoints: Path | str, fix: str = RESUME_FIX) -> ResumePoint | None:
    """The newest of a run's checkpoints (``last.ckpt``, then ``previous.ckpt``) that loads; ``None`` if the
    run has none; a :class:`DamagedFileError` naming each of them, and saying ``fix``, if none loads.

    "Loads" is what :func:`checkpoint_step` reads: the file's index and its pickled structure whole (a file
    cut short loses its index, which sits at the end); the tensors' bytes are Lightning's to read."""
    candidates = [p for p in (Path(checkpoints) / LAST_CHECKPOINT, Path(checkpoints) / PREVIOUS_CHECKPOINT)
                  if p.is_file()]
    passed_over = []
    for path in candidates:
        try:
            return ResumePoint(path, checkpoint_step(path, fix), tuple(passed_over))
        except DamagedFileError as error:
            # "run checkpoint: PATH <what is wrong>; <fix>" -> what is wrong
            why = str(error).removeprefix(f"run checkpoint: {path} ").removesuffix(f"; {fix}")
            passed_over.append((path, why))
    if not passed_over:
        return None
    wrong = ", and ".join(f"{path} {why}" for path, why in passed_over)
    raise DamagedFileError(f"run checkpoint: {wrong}; {fix}")
