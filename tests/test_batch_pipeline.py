"""The proxy tasks' batches are made a batch at a time (data/normalised.py) with the pixels the per-sample
PIL path gave: timm's eval transform on each canvas, under the sample's seed (data/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.digit_tasks import TASKS, DigitTasksDataModule, digit_banks, render
from data.digits import ArrayImages
from data.normalised import normalise
from data.pathfinder import PathfinderDataModule
from data.sampling import SeededTransformDataset
from data.transforms import eval_transform


def per_sample_transform(size: int, mean, std):
    """The transform both proxy data modules applied to every canvas before batches were made whole."""
    return eval_transform(size, mean, std, crop_pct=1.0)


def loader_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor, list]]:
    """Every batch of ``epoch`` with the (index, seed) keys the sampler dealt for it."""
    loader.sampler.set_epoch(epoch)
    keys = list(loader.sampler)
    size = loader.batch_size
    return [(x, y, keys[i * size : (i + 1) * size]) for i, (x, y) in enumerate(loader)]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_digit_task_batches_hold_the_per_sample_transforms_pixels(task):
    classes = TASKS[task].num_classes
    dm = DigitTasksDataModule(task=task, num_classes=classes, samples_per_epoch=48, val_samples=20,
                              batch_size=16, seed=3)
    dm.setup()
    bank = digit_banks()[0]
    transform = per_sample_transform(32, dm.mean, dm.std)
    for epoch in (0, 1):
        for images, labels, keys in loader_batches(dm.train_dataloader(), epoch):
            for row, (index, seed) in enumerate(keys):
                canvas, label = render(task, bank, index, seed)
                assert torch.equal(images[row], transform(Image.fromarray(canvas)))  # bit-identical
                assert labels[row] == label
    old_val = SeededTransformDataset(ArrayImages(dm.val_set.images, dm.val_set.labels), transform)
    images, labels = next(iter(dm.val_dataloader()))
    for row in range(len(labels)):
        expected, label = old_val[(row, 0)]
        assert torch.equal(images[row], expected) and labels[row] == label


def test_pathfinder_batches_hold_the_per_sample_transforms_pixels(tmp_path):
    dm = PathfinderDataModule(train_samples=64, val_samples=16, cache_dir=str(tmp_path), batch_size=16, seed=1)
    dm.setup()
    transform = per_sample_transform(32, dm.mean, dm.std)
    old_train = SeededTransformDataset(ArrayImages(dm.train_set.images, dm.train_set.labels), transform)
    for epoch in (0, 2):
        for images, labels, keys in loader_batches(dm.train_dataloader(), epoch):
            for row, key in enumerate(keys):
                expected, label = old_train[key]
                assert torch.equal(images[row], expected) and labels[row] == label
    single, label = dm.val_set[(5, 123)]
    expected, expected_label = SeededTransformDataset(ArrayImages(dm.val_set.images, dm.val_set.labels),
                                                      transform)[(5, 123)]
    assert torch.equal(single, expected) and label == expected_label


def test_normalise_matches_to_tensor_and_normalize_on_three_channels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = per_sample_transform(8, mean, std)
    batch = normalise(images, mean, std)
    for row in range(4):
        assert torch.equal(batch[row], transform(Image.fromarray(images[row])))
