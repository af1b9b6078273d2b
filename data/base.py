"""What every mixerlab data module shares: the keys the backbone reads, loaders, and the sampler."""

from __future__ import annotations

import signal
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from data.background import BackgroundLoader
from data.sampling import EpochSampler
from data.workers import loader_workers
from mixerlab.errors import ConfigError


def ignore_job_signals(worker_id: int) -> None:
    """Loader workers leave SLURM's and submitit's preemption signals (USR1, USR2) to the main process.

    Their default action is to terminate: a worker that dies first turns a clean requeue into a
    "DataLoader worker exited unexpectedly" failure. Augmentation seeds come per sample (data/sampling.py),
    so workers need no seeding of their own.
    """
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


class ImageDataModule(L.LightningDataModule):
    """Base for every ``data=`` option.

    Subclasses set ``self.train_set`` and ``self.val_set`` in ``setup`` (datasets indexed by
    ``(index, seed)``, see :mod:`data.sampling`) and may override ``on_after_batch_transfer`` for
    augmentation that runs on the device (FFCV). The backbone reads ``img_size``, ``in_chans`` and
    ``num_classes`` from the same config node, so model and data always agree.

    ``num_workers``: loader workers per process, ``auto`` (or null) for what the machine has
    (:mod:`data.workers`). ``background_batches: N`` (with ``num_workers: 0``) makes the training batches
    N ahead in a thread of the training process instead (:mod:`data.background`); only data modules whose
    samples draw no process-wide random state allow it (``thread_safe_samples``).

    ``batch_size`` is per device. ``global_batch`` (optional) fixes the batch the optimizer sees instead:
    the per-device batch becomes ``global_batch / (devices x nodes x accumulation)``, so the same config
    trains the same recipe on 1 or 64 GPUs.

    The data order's position is part of every checkpoint (``state_dict``): a run resumed mid-epoch
    continues with exactly the samples the uninterrupted run would have used next. A subclass that builds
    its own train loader must start it at ``resume_position`` too (see ``_resume_sampler``).
    """

    def __init__(
        self,
        img_size: int,
        in_chans: int,
        num_classes: int,
        batch_size: int,
        num_workers: int | str | None = 0,
        pin_memory: bool = True,  # only takes effect when CUDA is present
        persistent_workers: bool = False,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        seed: int = 0,
        repeated_aug: int = 1,
        eval_batch_size: int | None = None,
        global_batch: int | None = None,
        background_batches: int = 0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.global_batch = global_batch
        self.num_workers = self.resolve_workers(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.seed = seed
        self.repeated_aug = repeated_aug
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.resume_position: dict | None = None  # data-order position from a checkpoint
        self.background_batches = self.check_background(background_batches)

    # samples drawn without touching the process-wide RNGs (torch, numpy, random), so a thread may make them
    thread_safe_samples = False

    def check_background(self, batches: int) -> int:
        if batches and not self.thread_safe_samples:
            raise ConfigError(
                f"data.background_batches={batches}: this data module seeds the process-wide random "
                "generators per sample, which a background thread would race with the training step; "
                "set it to 0 and use data.num_workers for loader processes"
            )
        if batches and self.num_workers:
            raise ConfigError(
                f"data.background_batches={batches} with data.num_workers={self.num_workers}: choose one "
                "(a thread of the training process, or worker processes)"
            )
        return batches

    def resolve_workers(self, setting: int | str | None) -> int:
        """DataLoader worker processes (``data/workers.py``); FFCV overrides it with its decoding threads."""
        return loader_workers(setting)

    def resolve_batch_size(self, world_size: int, accumulation: int = 1) -> int:
        """Set the per-device batch from ``global_batch`` when given; returns the per-device batch."""
        if self.global_batch:
            replicas = world_size * accumulation
            if self.global_batch % replicas:
                raise ConfigError(
                    f"data.global_batch={self.global_batch} is not divisible by devices x nodes x "
                    f"accumulate_grad_batches = {replicas}: choose a multiple of {replicas}"
                )
            self.batch_size = self.global_batch // replicas
        return self.batch_size

    # -- exact resume: where in the data order the run is
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        epoch = trainer.current_epoch
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if batches >= trainer.num_training_batches:  # saved at an epoch's end: the next epoch starts afresh
            epoch, batches = epoch + 1, 0
        rank, world = self._rank_world()
        return {"epoch": epoch, "batches": batches, "batch_size": self.batch_size, "world_size": world}

    def load_state_dict(self, state: dict) -> None:
        self.resume_position = dict(state) if state else None

    # -- distribution: this module deals its own data, so the Trainer runs with use_distributed_sampler=False
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        rank, world = self._rank_world()
        sampler = EpochSampler(
            len(dataset),
            seed=self.seed,
            shuffle=train,
            rank=rank,
            world_size=world,
            repeats=self.repeated_aug if (train and world > 1) else 1,
        )
        if train and self.resume_position:
            self._resume_sampler(sampler, world)
        background = {"ahead": self.background_batches} if train and self.background_batches else {}
        return (BackgroundLoader if background else DataLoader)(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            drop_last=train,
            worker_init_fn=ignore_job_signals,
            **background,
        )

    def _resume_sampler(self, sampler: EpochSampler, world: int) -> None:
        state = self.resume_position
        if state["batches"] and (state["world_size"], state["batch_size"]) != (world, self.batch_size):
            raise ConfigError(
                f"this checkpoint stopped mid-epoch with {state['world_size']} processes x batch "
                f"{state['batch_size']}; resume it with the same devices, nodes and data.batch_size "
                f"(now {world} x {self.batch_size}), or from an epoch-end checkpoint"
            )
        sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    @property
    def num_train_samples(self) -> int:
        return len(self.train_set) if self.train_set is not None else 0

    def train_samples_per_epoch(self) -> int:
        """Training samples in one epoch, before training starts. Subclasses that know it without loading
        anything override this; the default sets the module up (each ``setup`` runs once)."""
        if self.train_set is None:
            self.setup("fit")
        return len(self.train_set)

    def check_optimizer_steps(self, world_size: int, limit_train_batches: int | float | None = None) -> int:
        """Training batches per epoch on each process; a ConfigError when that is 0, which would end the run
        "completed" with no optimizer step taken. Training drops the incomplete last batch (``drop_last``),
        each process gets ``ceil(samples / processes)`` samples (:class:`data.sampling.EpochSampler`)."""
        samples = self.train_samples_per_epoch()
        per_process = -(-samples // world_size)
        full = per_process // self.batch_size
        batches = full
        if isinstance(limit_train_batches, int) and not isinstance(limit_train_batches, bool):
            batches = min(full, limit_train_batches)
        elif isinstance(limit_train_batches, float):
            batches = int(full * limit_train_batches)
        if batches > 0:
            return batches
        spread = f" over {world_size} processes ({per_process} each)" if world_size > 1 else ""
        if full > 0:
            raise ConfigError(
                f"trainer.limit_train_batches={limit_train_batches} keeps 0 of the {full} training batches "
                f"per epoch, so no optimizer step would run: raise it (an integer >= 1, or a fraction >= "
                f"{1 / full:.3g})"
            )
        batch = f"data.batch_size={self.batch_size}"
        if self.global_batch:
            batch = f"data.global_batch={self.global_batch} (per device: {self.batch_size})"
        fewer = ", or train on fewer devices" if world_size > 1 else ""
        raise ConfigError(
            f"{samples} training images{spread} do not fill one batch of {batch}: training drops the "
            f"incomplete last batch (drop_last), so an epoch would run 0 optimizer steps and the run would "
            f"end untrained. Set data.batch_size to at most {per_process}, or add training images{fewer}"
        )
