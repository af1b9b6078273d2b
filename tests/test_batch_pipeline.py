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
    dm = PathfinderDataModule(train_samples=64, val_samples=16, cache_dir=str(tmp_path), batch_size=16,
                              seed=1)
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


# sha256 over canvas bytes + label of the first 600 samples of epochs 0 and 1 (EpochSampler(20000, seed=0)),
# computed with the code at 5779ee1 (`git archive 5779ee1`, data/digit_tasks.py's render, numpy 2.4.6): the
# cheaper draws of data.digit_tasks.pick draw the same numbers, so the canvases are these bytes.
CANVASES_AT_5779EE1 = {
    "marker": "5260bfcb5b7cabc3c3eb4d52161afeb5d73d919ded175a978e4ef5ec6ee776f5",
    "odd_one_out": "cef36e1483e87190b4124f612c180c3d6feb1c5ee3994736a6df71531d94ef4d",
    "same_different": "2047fa0f67a637a3bd1d44ad97295f26956e7fa03bba7083a26ee93e4b767c03",
    "sum_mod10": "0139f084915dcf8a42b0faa75034c504e79734723fdc4e65ecf12497acd796fe",
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_digit_task_canvases_are_the_bytes_drawn_before_the_cheaper_draws(task):
    import hashlib

    from data.sampling import EpochSampler

    bank = digit_banks()[0]
    digest = hashlib.sha256()
    sampler = EpochSampler(20000, seed=0)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        for index, seed in sampler.order()[:600]:
            canvas, label = render(task, bank, index, seed)
            digest.update(canvas.tobytes() + bytes([label]))
    assert digest.hexdigest() == CANVASES_AT_5779EE1[task]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_bank_draw_gives_choices_numbers_and_leaves_the_generator_where_choice_does(count):
    """DigitBank.draw's plain integers calls stand in for Generator.choice(pool, count, replace=False): the
    same images and the same generator state after, over many seeds and pool sizes (1 and 2 included)."""
    from data.digit_tasks import DigitBank

    for pool in (1, 2, 3, 7, 35, 140, 181):
        if pool < count:
            continue
        images = np.arange(10 * pool * 64, dtype=np.int64).reshape(10 * pool, 8, 8)  # every image unique
        bank = DigitBank(images, np.repeat(np.arange(10), pool))
        for seed in range(300):
            ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
            for digit in (seed % 10, (seed + 3) % 10):
                drawn = bank.draw(ours, digit, count)
                chosen = theirs.choice(bank.by_class[digit], size=count, replace=False)
                assert [int(image[0, 0]) // 64 for image in drawn] == chosen.tolist()
                assert ours.bit_generator.state == theirs.bit_generator.state
                ours.integers(7), theirs.integers(7)  # a 32-bit draw between: the buffered half-word too


def test_validation_canvases_are_the_bytes_drawn_before_the_cheaper_draws():
    import hashlib

    from data.digit_tasks import render_many

    val_bank = digit_banks()[1]
    digests = {}
    for task in sorted(TASKS):
        images, labels = render_many(task, val_bank, 300, seed=0)
        digests[task] = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]
    assert digests == VAL_CANVASES_AT_82716EC


# sha256 (first 16 hex digits) of the first 300 validation canvases and labels per task, computed with
# data/digit_tasks.py at 82716ec (Generator.choice for the source images, numpy 2.4.6)
VAL_CANVASES_AT_82716EC = {
    "marker": "8ec442b5b3fa1d72",
    "odd_one_out": "6ee1baaafdaaf6ff",
    "same_different": "1a12586ace8dfa5e",
    "sum_mod10": "9ae418b38a0e810a",
}


# ---------------------------------------------------------------- batches made in a background thread
def test_background_thread_serves_the_same_batches_in_the_same_order(tmp_path):
    from data.background import BackgroundLoader

    plain = DigitTasksDataModule(samples_per_epoch=64, val_samples=16, batch_size=16, seed=2)
    threaded = DigitTasksDataModule(samples_per_epoch=64, val_samples=16, batch_size=16, seed=2,
                                    background_batches=2)
    plain.setup()
    threaded.setup()
    loader = threaded.train_dataloader()
    assert isinstance(loader, BackgroundLoader) and len(loader) == 4
    assert not isinstance(threaded.val_dataloader(), BackgroundLoader)  # validation: plain
    for epoch in (0, 1):
        expected = [b[:2] for b in loader_batches(plain.train_dataloader(), epoch)]
        loader.sampler.set_epoch(epoch)
        got = list(loader)
        assert len(got) == len(expected) == 4
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_background_thread_hands_a_failure_to_the_training_thread_and_stops_when_dropped():
    import threading

    from data.background import BackgroundLoader

    class Breaks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 64

        def __getitem__(self, i: int):
            if i == 40:
                raise RuntimeError("sample 40 is broken")
            return torch.zeros(2), i

    with pytest.raises(RuntimeError, match="sample 40"):
        list(BackgroundLoader(Breaks(), batch_size=8, ahead=2))
    iterator = iter(BackgroundLoader(Breaks(), batch_size=4, ahead=1))
    next(iterator)  # an epoch cut short (max_steps): the producer must not outlive the iterator
    producer = iterator.thread
    del iterator
    producer.join(timeout=5)
    assert not producer.is_alive() and threading.active_count() >= 1


def test_background_batches_refused_where_samples_seed_the_global_generators():
    from data.digits import DigitsDataModule
    from mixerlab.errors import ConfigError

    with pytest.raises(ConfigError, match="data.background_batches=2"):
        DigitsDataModule(background_batches=2, num_workers=0)
    with pytest.raises(ConfigError, match="choose one"):
        DigitTasksDataModule(background_batches=2, num_workers=1)
