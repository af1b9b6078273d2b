"""Pathfinder (Linsley et al. 2018; the Long Range Arena image task, Tay et al. 2021), from our own generator.

Each image holds curvy dashed paths on a black canvas and two square end-point markers; the label says
whether one path connects the two markers. Every sample draws two "main" paths A and B and
``num_distractors`` more paths of the same kind, none touching another:

    connected (1):      markers on both ends of A
    disconnected (0):   a marker on one end of A and one on an end of B

so both classes have the same number of paths, path ends and markers: only connectivity differs. In a
disconnected sample B is placed so that its marker lies as far from A's marker as A's other end does:
the distance between the markers does not give the label away (without this, a depth-4 decision tree on
that distance alone scores 89% on the default setting).

A path is a smooth random walk ``path_length`` pixels long whose heading turns by N(0, curvature) radians
per pixel; it is drawn as dashes (``dash`` pixels on, ``gap`` off) from a random phase. Difficulty grows with
``path_length`` and ``num_distractors``.

The set is generated once per setting and cached as ``<cache_dir>/<settings hash>.npz`` (written
atomically, so concurrent runs never read half a file); the hash covers every setting and
``GENERATOR_VERSION``. Sample ``i`` is drawn from ``numpy.random.default_rng(sample_seed(dataset_seed,
split, i))`` and has label ``i % 2`` (exactly balanced), so the same settings give the same bytes anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data.base import ImageDataModule
from data.normalised import NormalisedArrays
from data.sampling import sample_seed
from mixerlab.errors import ConfigError

GENERATOR_VERSION = 2  # bump when the drawing changes, so old caches are not reused
PLACE_TRIES = 256  # random positions tried for one path before the sample starts over
RESTARTS = 200  # samples started over before the setting is declared too crowded


@dataclass(frozen=True)
class PathfinderSettings:
    """Everything that determines the generated set (and so its cache file)."""

    img_size: int = 32
    path_length: int = 14
    num_distractors: int = 0
    curvature: float = 0.3
    dash: int = 3
    gap: int = 1
    marker: int = 3
    train_samples: int = 100_000
    val_samples: int = 4_000
    dataset_seed: int = 0

    def check(self) -> None:
        if self.img_size < 16:
            raise ConfigError(f"data.img_size={self.img_size}: Pathfinder needs at least 16 px (32 or 64)")
        if not 2 <= self.path_length <= self.img_size:
            raise ConfigError(
                f"data.path_length={self.path_length} must be in [2, data.img_size={self.img_size}]"
            )
        if self.num_distractors < 0 or self.dash < 1 or self.gap < 0 or self.marker < 1:
            raise ConfigError(
                f"data.num_distractors={self.num_distractors}, data.dash={self.dash}, data.gap={self.gap}, "
                f"data.marker={self.marker}: need num_distractors >= 0, dash >= 1, gap >= 0, marker >= 1"
            )
        if self.train_samples < 2 or self.val_samples < 2:
            raise ConfigError("data.train_samples and data.val_samples must be at least 2 (one per class)")

    def digest(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


STEP = 0.8  # walk step (px): below 1, so consecutive rounded pixels always touch (8-connected)


def walk(rng: np.random.Generator, length: int, curvature: float) -> np.ndarray:
    """Pixels (k, 2) of a smooth random walk of ``length`` px from the origin, consecutive pixels touching."""
    steps = int(np.ceil(length / STEP))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, curvature * STEP, size=steps))
    moves = STEP * np.stack([np.sin(heading), np.cos(heading)], axis=1)  # (steps, 2) as (dy, dx)
    points = np.rint(np.vstack([np.zeros(2), np.cumsum(moves, axis=0)])).astype(np.int64)
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = (np.diff(points, axis=0) != 0).any(axis=1)  # drop repeats of the same pixel
    return points[keep]


def body(points: np.ndarray, marker: int) -> np.ndarray:
    """A path's pixels plus room for a marker square at each end, shifted so the smallest corner is 0."""
    half = marker // 2
    square = (
        np.stack(np.meshgrid(np.arange(marker), np.arange(marker), indexing="ij"), -1).reshape(-1, 2) - half
    )
    pixels = np.vstack([points, points[0] + square, points[-1] + square])
    return pixels - pixels.min(axis=0)


def place(
    rng: np.random.Generator,
    pixels: np.ndarray,
    blocked: np.ndarray,
    ring: tuple[int, np.ndarray, float] | None = None,
) -> np.ndarray | None:
    """``pixels`` moved to a uniformly random place on the canvas that is not ``blocked``, or None.

    ``blocked`` has a one-pixel border around the canvas. ``ring = (i, centre, radius)`` also asks that
    pixel ``i`` land within one pixel of ``radius`` from ``centre``. Rejection sampling over translations:
    every accepted translation is equally likely."""
    room = blocked.shape[0] - 2 - pixels.max(axis=0)
    if (room < 1).any():
        return None
    shifts = rng.integers(room, size=(PLACE_TRIES, 2))
    moved = pixels[None] + shifts[:, None]  # (tries, k, 2)
    ok = ~blocked[moved[..., 0] + 1, moved[..., 1] + 1].any(axis=1)
    if ring is not None:
        i, centre, radius = ring
        ok &= np.abs(np.linalg.norm(moved[:, i] - centre, axis=1) - radius) <= 1.0
    free = np.flatnonzero(ok)
    return moved[free[0]] if len(free) else None


NEIGHBOURS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def block(blocked: np.ndarray, pixels: np.ndarray) -> None:
    """Mark ``pixels`` and their 8 neighbours: the next path keeps one clear pixel away."""
    grown = (pixels[:, None, :] + NEIGHBOURS[None] + 1).reshape(-1, 2)
    blocked[grown[:, 0], grown[:, 1]] = True


def draw_sample(rng: np.random.Generator, settings: PathfinderSettings, label: int) -> np.ndarray:
    """One (size, size) uint8 image with the given label (1: the markers are connected)."""
    s = settings
    half = s.marker // 2
    for _ in range(RESTARTS):  # a crowded canvas can leave no room for the next path: start over
        blocked = np.zeros((s.img_size + 2, s.img_size + 2), dtype=bool)
        paths: list[np.ndarray] = []
        marked: list[np.ndarray] = []  # marker centres
        for k in range(2 + s.num_distractors):
            points = walk(rng, s.path_length, s.curvature)
            ring = None
            end = -int(rng.integers(2)) % len(points)  # first or last pixel
            if k == 1 and label == 0:
                # B carries the second marker as far from the first as A's other end is, so the
                # markers' distance says nothing about the label
                a = paths[0]
                ring = (end, marked[0], float(np.linalg.norm(a[0] - a[-1])))
            moved = place(rng, body(points, s.marker), blocked, ring)
            if moved is None:
                break
            block(blocked, moved)
            path = moved[: len(points)]
            paths.append(path)
            if k == 0:
                marked = [path[0], path[-1]] if label == 1 else [path[end]]
            elif k == 1 and label == 0:
                marked.append(path[end])
        if len(paths) == 2 + s.num_distractors:
            break
    else:
        raise ConfigError(
            f"data.path_length={s.path_length} with data.num_distractors={s.num_distractors} does not fit "
            f"on a {s.img_size}x{s.img_size} canvas: use shorter paths, fewer distractors or data.img_size=64"
        )

    image = np.zeros((s.img_size, s.img_size), dtype=np.uint8)
    period = s.dash + s.gap
    for points in paths:
        on = (np.arange(len(points)) + rng.integers(period)) % period < s.dash
        image[points[on, 0], points[on, 1]] = 255
    for y, x in marked:
        image[y - half : y - half + s.marker, x - half : x - half + s.marker] = 255
    return image


def generate(settings: PathfinderSettings, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All samples of ``split`` ("train" or "val"): (n, size, size) uint8 images and int64 labels."""
    count = settings.train_samples if split == "train" else settings.val_samples
    stream = {"train": 0, "val": 1}[split]
    images = np.zeros((count, settings.img_size, settings.img_size), dtype=np.uint8)
    labels = np.arange(count, dtype=np.int64) % 2
    for i in range(count):
        rng = np.random.default_rng(sample_seed(settings.dataset_seed, stream, i))
        images[i] = draw_sample(rng, settings, int(labels[i]))
    return images, labels


def cache_path(settings: PathfinderSettings, cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / f"{settings.digest()}.npz"


def load_or_generate(settings: PathfinderSettings, cache_dir: str | Path) -> dict[str, np.ndarray]:
    """The generated set for ``settings``, from its cache file or generated once and cached."""
    path = cache_path(settings, cache_dir)
    if path.is_file():
        with np.load(path) as cached:
            return {key: cached[key] for key in cached.files if key != "settings"}
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val"):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = generate(settings, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, settings=json.dumps(asdict(settings)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays


class PathfinderDataModule(ImageDataModule):
    """``data=pathfinder``: a fixed generated set held in memory, normalised like any other dataset."""

    thread_safe_samples = True  # fixed arrays, no random draw: a thread may make batches (data/background.py)

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 1,
        num_classes: int = 2,
        batch_size: int = 128,
        path_length: int = 14,
        num_distractors: int = 0,
        curvature: float = 0.3,
        dash: int = 3,
        gap: int = 1,
        marker: int = 3,
        train_samples: int = 100_000,
        val_samples: int = 4_000,
        dataset_seed: int = 0,
        cache_dir: str = "~/.cache/mixerlab/pathfinder",
        mean: Sequence[float] = (0.05,),
        std: Sequence[float] = (0.22,),
        **kwargs,
    ) -> None:
        if (in_chans, num_classes) != (1, 2):
            raise ConfigError(
                f"data.in_chans={in_chans}, data.num_classes={num_classes}: Pathfinder is 1-channel, 2-class"
            )
        self.settings = PathfinderSettings(
            img_size=img_size,
            path_length=path_length,
            num_distractors=num_distractors,
            curvature=curvature,
            dash=dash,
            gap=gap,
            marker=marker,
            train_samples=train_samples,
            val_samples=val_samples,
            dataset_seed=dataset_seed,
        )
        self.settings.check()
        for label in (0, 1):  # a setting too crowded to draw fails now, not after minutes of generating
            draw_sample(np.random.default_rng(label), self.settings, label)
        super().__init__(
            img_size=img_size, in_chans=1, num_classes=2, batch_size=batch_size, mean=mean, std=std, **kwargs
        )
        self.cache_dir = cache_dir
        self.class_names = ("apart", "connected")  # label order; sorted, so folder exports keep it

    def split_arrays(self, split: str, epochs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """A split as uint8 images and labels (the set is fixed: ``epochs`` is accepted for symmetry)."""
        arrays = load_or_generate(self.settings, self.cache_dir)
        return arrays[f"{split}_images"], arrays[f"{split}_labels"]

    def train_samples_per_epoch(self) -> int:
        return self.settings.train_samples

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        arrays = load_or_generate(self.settings, self.cache_dir)
        # ToTensor + normalise, a batch at a time (data/normalised.py): timm's eval transform at the canvas
        # size, whose resize and crop are no-ops, with the same bits
        self.train_set = NormalisedArrays(arrays["train_images"], arrays["train_labels"], self.mean, self.std)
        self.val_set = NormalisedArrays(arrays["val_images"], arrays["val_labels"], self.mean, self.std)
