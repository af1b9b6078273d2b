"""Deterministic data order and per-sample augmentation seeds.

Every training sample is drawn as ``(index, seed)``: the order is a permutation of (base seed, epoch),
and each sample's augmentation runs under its own seed derived from (base seed, epoch, index). So a
sample's pixels do not depend on which process, worker or batch fetched it: one process with batch 2b
and two processes with batch b see identical images, and a resumed run replays exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    # splitmix-style mixing keeps neighbouring (epoch, index) pairs far apart
    z = (base_seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) % (1 << 31)


class EpochSampler(Sampler):
    """Yields ``(index, seed)`` for this rank's share of a per-epoch permutation.

    ``shuffle=False`` keeps dataset order (evaluation). With ``world_size > 1`` the (padded) permutation
    is dealt round-robin, like ``DistributedSampler``, so rank r of W sees positions r, r+W, ...
    ``repeats > 1`` is repeated augmentation (DeiT): each drawn index appears ``repeats`` times in a row
    with different seeds, so its copies land on different ranks; each rank still takes
    ``ceil(len(dataset) / world_size)`` samples per epoch.

    :meth:`resume_at` makes the next pass over a given epoch start part-way, for a run resumed from a
    mid-epoch checkpoint: the rest of that epoch is dealt exactly as the uninterrupted run deals it.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        repeats: int = 1,
    ) -> None:
        self.n = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.repeats = repeats
        self.epoch = 0
        self.per_rank = -(-num_samples // world_size)
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, position: int) -> None:
        """Iterating over ``epoch`` skips this rank's first ``position`` samples (those already trained on).

        Sets the epoch too: Lightning may create the resumed epoch's iterator before it calls ``set_epoch``.
        """
        self.epoch = epoch
        self._resume = (epoch, position)

    def order(self) -> list[tuple[int, int]]:
        """The whole epoch as (index, seed) pairs, in the order all ranks together consume it."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        pairs = [
            (i, sample_seed(self.seed, self.epoch * self.repeats + copy, i))
            for i in perm
            for copy in range(self.repeats)
        ]
        total = self.per_rank * self.world_size
        return (pairs * -(-total // len(pairs)))[:total] if pairs else pairs

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order()[self.rank :: self.world_size]
        if self._resume is not None and self._resume[0] == self.epoch:
            mine = mine[self._resume[1] :]
        return iter(mine)

    def __len__(self) -> int:
        return self.per_rank  # a whole epoch, also when resuming: the loop counts on from where it was


class SeededTransformDataset(Dataset):
    """Applies ``transform`` to ``source[index]`` under the sample's own seed.

    ``source[index]`` returns ``(image, label)``. Indexing with ``(index, seed)`` seeds torch, numpy and
    Python's ``random`` for this sample only and restores the caller's RNG state afterwards, so the
    training loop's own randomness (dropout, Mixup) is untouched. Plain integer indexing is deterministic
    too (seed = index).
    """

    def __init__(self, source, transform) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        image, label = self.source[index]
        if self.transform is None:
            return image, label
        # torch's CPU generator directly: torch.manual_seed would also queue CUDA seeding (~100 us)
        generator = torch.default_generator
        torch_state, py_state, np_state = generator.get_state(), random.getstate(), np.random.get_state()
        generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            image = self.transform(image)
        finally:
            generator.set_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)
        return image, label
