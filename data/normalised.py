"""uint8 images to normalised float tensors a whole batch at a time, with the per-sample transform's bits.

The proxy tasks (digit tasks, Pathfinder) need no augmentation: each sample is its canvas through timm's eval
transform at the canvas size, whose resize and centre crop are no-ops, so what is left is ToTensor
(``float / 255``) and Normalize (``(x - mean) / std``). Run through PIL per sample that cost ~210 us a
32x32 canvas, more than rendering it; the same float32 arithmetic on a (B, H, W) array costs ~1 us a
sample. Elementwise float32 operations round identically one at a time or in bulk, so every sample's
tensor is bit-identical to the per-sample transform's (tests/test_batch_pipeline.py compares them).

A dataset with ``__getitems__`` is handed a whole batch of keys by torch's DataLoader (its map-style
fetcher calls it when present), so the batch is made in one call and then collated as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, H, W) or (B, H, W, C) uint8 -> (B, C, H, W) float32: torchvision's ``to_tensor`` then
    ``normalize``, in the same order of the same float32 operations."""
    batch = torch.from_numpy(np.ascontiguousarray(images))
    batch = batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    batch = batch.to(torch.float32).div(255)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return batch.sub_(mean_t).div_(std_t)


class NormalisedArrays(Dataset):
    """Fixed uint8 images and labels served as normalised tensors (Pathfinder, the digit tasks' val set).

    Keys are ``(index, seed)`` from :class:`data.sampling.EpochSampler` or plain indices; the seed is not
    needed, since nothing here is random.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.images = images
        self.labels = labels
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence) -> list[tuple[torch.Tensor, int]]:
        rows = [key[0] if isinstance(key, tuple) else key for key in keys]
        images = normalise(self.images[rows], self.mean, self.std)
        return list(zip(images.unbind(0), (int(self.labels[r]) for r in rows), strict=True))
