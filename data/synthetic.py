"""Random tensors shaped like a real dataset: for benchmarks that must not wait on disk or decoding.

A fixed bank of ``bank_size`` images (normal noise, seeded) is indexed modulo its size, so an epoch of
any length costs one bank of memory and no per-sample work beyond the collate.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from data.base import ImageDataModule


class SyntheticImages(Dataset):
    """``num_samples`` (image, label) pairs drawn from a seeded bank; indexable by ``(index, seed)``."""

    def __init__(
        self, num_samples: int, img_size: int, in_chans: int, num_classes: int, bank_size: int, seed: int
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        bank = min(bank_size, num_samples)
        self.images = torch.randn(bank, in_chans, img_size, img_size, generator=g)
        self.labels = torch.randint(0, num_classes, (bank,), generator=g)
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        i = index % len(self.labels)
        return self.images[i], int(self.labels[i])


class SyntheticDataModule(ImageDataModule):
    def __init__(self, num_train: int = 1024, num_val: int = 256, bank_size: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_train = num_train
        self.num_val = num_val
        self.bank_size = bank_size

    def train_samples_per_epoch(self) -> int:
        return self.num_train

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        shape = dict(
            img_size=self.img_size,
            in_chans=self.in_chans,
            num_classes=self.num_classes,
            bank_size=self.bank_size,
        )
        self.train_set = SyntheticImages(self.num_train, seed=self.seed, **shape)
        self.val_set = SyntheticImages(self.num_val, seed=self.seed + 1, **shape)
