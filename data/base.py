"""What every mixerlab data module shares: the keys the backbone reads, loaders, and the sampler."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from data.sampling import EpochSampler


class ImageDataModule(L.LightningDataModule):
    """Base for every ``data=`` option.

    Subclasses set ``self.train_set`` and ``self.val_set`` in ``setup`` (datasets indexed by
    ``(index, seed)``, see :mod:`data.sampling`) and may override ``on_after_batch_transfer`` for
    augmentation that runs on the device (FFCV). The backbone reads ``img_size``, ``in_chans`` and
    ``num_classes`` from the same config node, so model and data always agree.
    """

    def __init__(
        self,
        img_size: int,
        in_chans: int,
        num_classes: int,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = True,  # only takes effect when CUDA is present
        persistent_workers: bool = False,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        seed: int = 0,
        repeated_aug: int = 1,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.seed = seed
        self.repeated_aug = repeated_aug
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

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
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            drop_last=train,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    @property
    def num_train_samples(self) -> int:
        return len(self.train_set) if self.train_set is not None else 0
