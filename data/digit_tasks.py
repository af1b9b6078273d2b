"""Long-range proxy tasks built from real handwritten digits: tasks that need token mixing.

On the embedded digits even a model with no token mixing reaches ~99%, so they cannot tell mixers apart.
These tasks place several native 8x8 scikit-learn digits on a zero canvas (default 32x32) so that the
answer depends on how digits far apart on the canvas relate:

    odd_one_out     three digits, two of class a and one of class b != a        label b          (10-way)
    sum_mod10       two digits a, b                                              label (a+b) % 10 (10-way)
    same_different  two digits                                                   label a == b     (2-way)
    marker          three digits in row bands, a bar at the left edge marks one  label its class  (10-way)

Digits keep their native 8x8 pixels (0..16 scaled to 0..255, so [0, 1] after ``ToTensor``), their top-left
corners lie on multiples of ``grid_step`` (4: a digit covers exactly 2x2 patches of a patch-4 ViT) and they
never overlap. A model that does not mix tokens sees each digit's patches in isolation and, after global
average pooling, only a bag of digit fragments: odd-one-out, sum and same/different are then at chance.

Leakage and determinism:
  - the source images are split first (the fixed stratified 80/20 split of :func:`data.digits.digit_split`),
    so no digit image appears in both training and validation samples;
  - sample ``index`` has class ``index % num_classes`` (every split is exactly balanced) and its pixels come
    from ``numpy.random.default_rng(seed)``: training samples are drawn fresh each epoch from the seed the
    :class:`data.sampling.EpochSampler` gives ``(index, seed)``, so they depend only on (run seed, epoch,
    index); validation is a fixed set rendered once from ``val_seed``, the same for every run seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from data.base import ImageDataModule
from data.digits import digit_images, digit_split
from data.normalised import NormalisedArrays, normalise
from data.sampling import EpochSampler, sample_seed
from mixerlab.errors import ConfigError

DIGIT = 8  # native scikit-learn digit size (pixels)


class DigitBank:
    """The source images one split may use, indexed by class."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images  # (n, 8, 8) uint8
        self.labels = labels  # (n,) int64
        self.by_class = [np.flatnonzero(labels == c) for c in range(10)]

    def draw(self, rng: np.random.Generator, digit: int, count: int = 1) -> list[np.ndarray]:
        """``count`` different source images of class ``digit``: ``rng.choice(pool, count, replace=False)``.

        One and two images (all the tasks ask for) are drawn the way ``Generator.choice`` draws them from a
        pool of at most 10,000 (Floyd's algorithm over bounded integers, then the swap its shuffle makes), as
        plain ``integers`` calls: ``choice`` spends ~10 us a call on its checks, about a fifth of a canvas.
        The same numbers and the same generator state after (pinned: tests/test_batch_pipeline.py)."""
        pool = self.by_class[digit]
        if count == 1:
            return [self.images[pool[rng.integers(0, len(pool))]]]
        if count == 2 and len(pool) <= 10_000:
            n = len(pool)
            first, second = int(rng.integers(0, n - 1)), int(rng.integers(0, n))
            if second == first:
                second = n - 1
            if rng.integers(0, 2) == 0:  # choice's shuffle draws the partner of position 1 from {0, 1}
                first, second = second, first
            return [self.images[pool[first]], self.images[pool[second]]]
        return [self.images[i] for i in rng.choice(pool, size=count, replace=False)]


def digit_banks() -> tuple[DigitBank, DigitBank]:
    """(train, val) banks over the fixed stratified 80/20 split of the source images."""
    images, labels = digit_images()
    train_idx, val_idx = digit_split()
    return DigitBank(images[train_idx], labels[train_idx]), DigitBank(images[val_idx], labels[val_idx])


def pick(rng: np.random.Generator, values: Sequence, size: int | None = None):
    """``rng.choice(values, size)`` with replacement, drawn as ``choice`` draws it (one ``integers`` call over
    the positions) without its per-call checks: ~12 us less a call, ~40% of a canvas's rendering. The same
    numbers either way (pinned against the draws before it: tests/test_batch_pipeline.py)."""
    if size is None:
        return values[int(rng.integers(0, len(values)))]
    return values[rng.integers(0, len(values), size=size)]


def free_corners(rng: np.random.Generator, size: int, step: int, count: int) -> list[tuple[int, int]]:
    """``count`` random top-left corners on the ``step`` grid whose 8x8 digits do not overlap.

    Each try draws its row and column slot as two scalar ``integers`` calls: the numbers one
    ``integers(size=2)`` call over the slots gives, without an array round trip per try."""
    slots = len(range(0, size - DIGIT + 1, step))
    corners: list[tuple[int, int]] = []
    tries = 0
    while len(corners) < count:
        tries += 1
        if tries % 100 == 0:  # a crowded canvas can box itself in: start over
            corners = []
        y, x = step * int(rng.integers(0, slots)), step * int(rng.integers(0, slots))
        if all(abs(y - cy) >= DIGIT or abs(x - cx) >= DIGIT for cy, cx in corners):
            corners.append((y, x))
    return corners


def paste(canvas: np.ndarray, digits: Sequence[np.ndarray], corners: Sequence[tuple[int, int]]) -> None:
    for image, (y, x) in zip(digits, corners, strict=True):
        canvas[y : y + DIGIT, x : x + DIGIT] = image


# A task draws a sample of the given class onto a zero canvas: (rng, bank, label, canvas, grid_step) -> None.
TaskFn = Callable[[np.random.Generator, DigitBank, int, np.ndarray, int], None]


def odd_one_out(rng: np.random.Generator, bank: DigitBank, label: int, canvas: np.ndarray, step: int) -> None:
    common = pick(rng, [c for c in range(10) if c != label])
    digits = [*bank.draw(rng, common, 2), *bank.draw(rng, label)]
    paste(canvas, digits, free_corners(rng, canvas.shape[0], step, 3))


def sum_mod10(rng: np.random.Generator, bank: DigitBank, label: int, canvas: np.ndarray, step: int) -> None:
    a = int(rng.integers(10))
    digits = [*bank.draw(rng, a), *bank.draw(rng, (label - a) % 10)]
    paste(canvas, digits, free_corners(rng, canvas.shape[0], step, 2))


def same_different(
    rng: np.random.Generator, bank: DigitBank, label: int, canvas: np.ndarray, step: int
) -> None:
    a = int(rng.integers(10))
    if label == 1:
        digits = bank.draw(rng, a, 2)
    else:
        b = pick(rng, [c for c in range(10) if c != a])
        digits = [*bank.draw(rng, a), *bank.draw(rng, b)]
    paste(canvas, digits, free_corners(rng, canvas.shape[0], step, 2))


MARKER_WIDTH = 2  # the bar at the left edge; digits start at x >= step, so the bar has its own patches


@functools.cache
def marker_layout(size: int, step: int) -> tuple[tuple[int, ...], np.ndarray]:
    """(the three row bands, the column slots) of a ``size`` canvas: rows on the step grid spread over the
    canvas (32 px: rows 0, 12, 24), columns right of the bar. The same for every canvas, so made once."""
    bands = tuple(int(round(y / step) * step) for y in np.linspace(0, size - DIGIT, 3))
    slots = np.arange(max(step, MARKER_WIDTH), size - DIGIT + 1, step)
    slots.setflags(write=False)
    return bands, slots


def marker(rng: np.random.Generator, bank: DigitBank, label: int, canvas: np.ndarray, step: int) -> None:
    bands, slots = marker_layout(canvas.shape[0], step)
    target = int(rng.integers(3))
    classes = [int(c) for c in rng.integers(10, size=3)]
    classes[target] = label
    columns = pick(rng, slots, 3)
    corners = [(y, int(x)) for y, x in zip(bands, columns, strict=True)]
    paste(canvas, [bank.draw(rng, c)[0] for c in classes], corners)
    canvas[bands[target] : bands[target] + DIGIT, :MARKER_WIDTH] = 255


DIGIT_CLASSES = tuple(str(c) for c in range(10))


@dataclass(frozen=True)
class DigitTask:
    draw: TaskFn
    class_names: tuple[str, ...]  # label order (sorted, so folder exports keep it)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


TASKS: dict[str, DigitTask] = {
    "odd_one_out": DigitTask(odd_one_out, DIGIT_CLASSES),
    "sum_mod10": DigitTask(sum_mod10, DIGIT_CLASSES),
    "same_different": DigitTask(same_different, ("different", "same")),
    "marker": DigitTask(marker, DIGIT_CLASSES),
}


def render(
    task: str, bank: DigitBank, index: int, seed: int, size: int = 32, grid_step: int = 4
) -> tuple[np.ndarray, int]:
    """Sample ``index`` of ``task`` drawn from ``seed``: a (size, size) uint8 canvas and its label."""
    spec = TASKS[task]
    label = index % spec.num_classes
    canvas = np.zeros((size, size), dtype=np.uint8)
    spec.draw(np.random.default_rng(seed), bank, label, canvas, grid_step)
    return canvas, label


def render_many(
    task: str, bank: DigitBank, count: int, seed: int, size: int = 32, grid_step: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed set: sample i drawn from ``sample_seed(seed, 0, i)``; (count, size, size) uint8 and labels."""
    images = np.zeros((count, size, size), dtype=np.uint8)
    labels = np.zeros(count, dtype=np.int64)
    for i in range(count):
        images[i], labels[i] = render(task, bank, i, sample_seed(seed, 0, i), size, grid_step)
    return images, labels


class FreshDigitTaskSamples(Dataset):
    """Training samples made on demand: ``dataset[(index, seed)]`` renders sample ``index`` from ``seed``.

    The :class:`data.sampling.EpochSampler` hands out a new seed per (run seed, epoch, index), so every epoch
    sees new compositions of the training digits; plain integer indexing uses seed = index. A batch of keys
    (``__getitems__``, which the DataLoader calls) is rendered sample by sample and normalised in one call
    (:mod:`data.normalised`): the same tensors as one at a time.
    """

    def __init__(
        self,
        task: str,
        bank: DigitBank,
        length: int,
        size: int,
        grid_step: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.task = task
        self.bank = bank
        self.length = length
        self.size = size
        self.grid_step = grid_step
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence) -> list[tuple[torch.Tensor, int]]:
        canvases = np.zeros((len(keys), self.size, self.size), dtype=np.uint8)
        labels = []
        for row, key in enumerate(keys):
            index, seed = key if isinstance(key, tuple) else (key, key)
            canvases[row], label = render(self.task, self.bank, index, seed, self.size, self.grid_step)
            labels.append(label)
        return list(zip(normalise(canvases, self.mean, self.std).unbind(0), labels, strict=True))


def check_layout(task: str, img_size: int, grid_step: int) -> None:
    if task not in TASKS:
        raise ConfigError(f"data.task={task!r} is not a digit task; choose one of {sorted(TASKS)}")
    if grid_step < 1 or (task == "marker" and grid_step < MARKER_WIDTH):
        raise ConfigError(f"data.grid_step={grid_step} must be >= {MARKER_WIDTH if task == 'marker' else 1}")
    slots = len(range(0, img_size - DIGIT + 1, grid_step))
    needed = 3 if task == "marker" else 2  # slots per axis that always fit the task's digits side by side
    if img_size < 3 * DIGIT or slots < needed:
        raise ConfigError(
            f"data.img_size={img_size} with data.grid_step={grid_step} leaves no room for {task}'s digits: "
            f"use data.img_size >= {3 * DIGIT} (default 32)"
        )


class DigitTasksDataModule(ImageDataModule):
    """``data=digit_tasks``: one of :data:`TASKS`, 1-channel canvases, normalised like any other dataset."""

    thread_safe_samples = True  # each sample from a numpy Generator of its own (data/background.py)

    def __init__(
        self,
        task: str = "odd_one_out",
        img_size: int = 32,
        in_chans: int = 1,
        num_classes: int = 10,
        batch_size: int = 128,
        samples_per_epoch: int = 20_000,
        val_samples: int = 2_000,
        val_seed: int = 0,
        grid_step: int = 4,
        mean: Sequence[float] = (0.06,),
        std: Sequence[float] = (0.2,),
        **kwargs,
    ) -> None:
        check_layout(task, img_size, grid_step)
        expected = TASKS[task].num_classes
        if num_classes != expected:
            raise ConfigError(
                f"data.num_classes={num_classes} but data.task={task} has {expected} classes: "
                f"set data.num_classes={expected} (the experiment=proxy_{task} preset does)"
            )
        if in_chans != 1:
            raise ConfigError(f"data.in_chans={in_chans}: the digit tasks are 1-channel; set data.in_chans=1")
        super().__init__(
            img_size=img_size,
            in_chans=1,
            num_classes=num_classes,
            batch_size=batch_size,
            mean=mean,
            std=std,
            **kwargs,
        )
        self.task = task
        self.samples_per_epoch = samples_per_epoch
        self.val_samples = val_samples
        self.val_seed = val_seed
        self.grid_step = grid_step
        self.class_names = TASKS[task].class_names

    def train_samples_per_epoch(self) -> int:
        return self.samples_per_epoch

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_bank, val_bank = digit_banks()
        self.train_set = FreshDigitTaskSamples(
            self.task, train_bank, self.samples_per_epoch, self.img_size, self.grid_step, self.mean, self.std
        )
        images, labels = render_many(
            self.task, val_bank, self.val_samples, self.val_seed, self.img_size, self.grid_step
        )
        self.val_set = NormalisedArrays(images, labels, self.mean, self.std)

    def split_arrays(self, split: str, epochs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """A split as uint8 images and labels, for export: the validation set, or the training samples of
        ``epochs`` epochs exactly as training draws them (run seed ``data.seed``), in index order."""
        train_bank, val_bank = digit_banks()
        if split == "val":
            return render_many(
                self.task, val_bank, self.val_samples, self.val_seed, self.img_size, self.grid_step
            )
        sampler = EpochSampler(self.samples_per_epoch, seed=self.seed, shuffle=True)
        images = np.zeros((epochs * self.samples_per_epoch, self.img_size, self.img_size), dtype=np.uint8)
        labels = np.zeros(len(images), dtype=np.int64)
        row = 0
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for index, seed in sorted(sampler.order()):
                images[row], labels[row] = render(
                    self.task, train_bank, index, seed, self.img_size, self.grid_step
                )
                row += 1
        return images, labels
