"""The embedded default dataset: scikit-learn's handwritten digits (UCI optdigits test set).

1,797 grayscale 8x8 images of 10 classes, shipped inside scikit-learn, so ``python train.py`` runs
offline on a fresh machine. A fixed stratified split (seed 0) keeps 360 images for validation. Images
go through the same timm transform machinery as ImageNet, upscaled to ``img_size``.

Digits are easy: even a model with no token mixing learns them. This dataset shows the machinery works;
it does not tell mixers apart (the proxy tasks do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from data.base import ImageDataModule
from data.sampling import SeededTransformDataset
from data.transforms import AugmentConfig, eval_transform, train_transform
from mixerlab.errors import ConfigError

VAL_FRACTION = 0.2
SPLIT_SEED = 0


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 images scaled from scikit-learn's 0..16 to 0..255, and int64 labels."""
    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def digit_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fixed stratified train / val split."""
    _, labels = digit_images()
    return train_test_split(
        np.arange(len(labels)), test_size=VAL_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )


class ArrayImages:
    """Indexable (PIL image, label) pairs over uint8 arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]), int(self.labels[index])


class DigitsDataModule(ImageDataModule):
    def __init__(
        self,
        img_size: int = 16,
        in_chans: int = 1,
        num_classes: int = 10,
        batch_size: int = 64,
        augment: dict | None = None,
        crop_pct: float = 1.0,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        **kwargs,
    ) -> None:
        if (in_chans, num_classes) != (1, 10):
            raise ConfigError(
                f"data.in_chans={in_chans}, data.num_classes={num_classes}: "
                "the digits are 1-channel with 10 classes"
            )
        super().__init__(
            img_size=img_size, in_chans=1, num_classes=10, batch_size=batch_size, mean=mean, std=std, **kwargs
        )
        self.augment = AugmentConfig(**(augment or {}))
        self.crop_pct = crop_pct

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = digit_images()
        train_idx, val_idx = digit_split()
        self.train_set = SeededTransformDataset(
            ArrayImages(images[train_idx], labels[train_idx]),
            train_transform(self.img_size, self.mean, self.std, self.augment),
        )
        self.val_set = SeededTransformDataset(
            ArrayImages(images[val_idx], labels[val_idx]),
            eval_transform(self.img_size, self.mean, self.std, self.crop_pct),
        )
