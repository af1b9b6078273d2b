"""``data=digits_c``: the embedded digits' validation images under the ImageNet-C corruptions that apply.

The corruption library refuses images under 32 px and works on RGB, so each 8x8 grey digit is upscaled to
32x32 (bicubic), copied to three channels, corrupted, turned back to grey (PIL ``L``) and then goes through
the model's eval transform (to 16x16 for the default run), like the clean digits.

Which corruptions: the 14 of ImageNet-C's 15 that act on a 32-px grey digit as they act on a photo.
``frost`` is left out: it overlays a random crop of 600-900 px photographs of frost, and a 32-px crop of
such a photo is a near-uniform patch, so on a digit it is a brightness shift rather than frost (and reading
the photo for every image costs more than all other corruptions together). ``saturate`` and the other
colour-only extras are not among the 15.

Normalisation: there is no AlexNet on digits, so digits-C reports the *unnormalised* mean corruption error
(mean over corruptions of the error averaged over severities, in %) and the mean top-1; see
:mod:`mixerlab.evaluation`.

The corrupted set is a function of the settings alone (per-image seeds), so it is computed once, in
``num_workers`` processes (null: one per core), and cached under ``cache_dir/<settings digest>.npz``. It
costs about 29 s of CPU time (360 images x 14 corruptions x 5 severities at 32 px; glass and zoom blur
are half of it), measured with ``time.process_time``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from data.corruptions import IMAGENET_C, MIN_SIZE, check_corruptions, corrupt, corruption_seed
from data.digits import ArrayImages, digit_images, digit_split
from data.sampling import SeededTransformDataset
from data.shifted import EvalSet
from data.transforms import eval_transform
from mixerlab.errors import ConfigError

DIGITS_C = tuple(c for c in IMAGENET_C if c != "frost")
CACHE_VERSION = 1  # bump when how a digit is corrupted changes: older caches are then not reused


def corrupt_digits(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """(n, 8, 8) uint8 grey digits -> (n, 32, 32) uint8 grey, corrupted (see the module docstring)."""
    out = np.empty((len(images), MIN_SIZE, MIN_SIZE), dtype=np.uint8)
    for i, digit in enumerate(images):
        big = Image.fromarray(digit).resize((MIN_SIZE, MIN_SIZE), Image.BICUBIC).convert("RGB")
        seed_i = corruption_seed(corruption, severity, i, seed)
        pixels = corrupt(np.asarray(big), corruption, severity, seed_i)
        out[i] = np.asarray(Image.fromarray(pixels).convert("L"))
    return out


def _task(args):
    return corrupt_digits(*args)


class DigitsCorrupted:
    """Evaluation-only data over the digits' fixed validation split (``data/digits.py``)."""

    normalise = "clean"  # no AlexNet errors on digits: unnormalised and clean-relative corruption errors
    loader_workers = 0  # the images are in memory: loading costs nothing next to a worker's start-up

    def __init__(
        self,
        img_size: int = 16,
        in_chans: int = 1,
        num_classes: int = 10,
        corruptions: Sequence[str] = DIGITS_C,
        severities: Sequence[int] = (1, 2, 3, 4, 5),
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        crop_pct: float = 1.0,
        seed: int = 0,
        cache_dir: str | None = None,
        name: str = "c",
        **unused,
    ) -> None:
        if (in_chans, num_classes) != (1, 10):
            raise ConfigError(f"data=digits_c needs a 1-channel 10-class model (digits); this one has "
                              f"in_chans={in_chans}, num_classes={num_classes}")
        check_corruptions(corruptions, severities)
        if "frost" in corruptions:
            raise ConfigError("data.corruptions: frost does not apply to 32-px digits (data/digits_c.py)")
        self.img_size, self.num_classes = img_size, num_classes
        self.corruptions, self.severities = list(corruptions), list(severities)
        self.batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.mean, self.std, self.crop_pct, self.seed = tuple(mean), tuple(std), crop_pct, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.name = name

    def settings_digest(self, val_idx: np.ndarray) -> str:
        key = {"corruptions": self.corruptions, "severities": self.severities, "seed": self.seed,
               "val": hashlib.sha1(val_idx.tobytes()).hexdigest(), "size": MIN_SIZE,
               "library": metadata.version("imagecorruptions-imaug"), "version": CACHE_VERSION}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def corrupted(self) -> tuple[dict[tuple[str, int], np.ndarray], np.ndarray]:
        images, labels = digit_images()
        _, val_idx = digit_split()
        cache = self.cache_dir / f"{self.settings_digest(val_idx)}.npz" if self.cache_dir else None
        tasks = [(c, s) for c in self.corruptions for s in self.severities]
        if cache is not None and cache.exists():
            stored = np.load(cache)
            return {t: stored[f"{t[0]}_{t[1]}"] for t in tasks}, labels[val_idx]
        args = [(images[val_idx], c, s, self.seed) for c, s in tasks]
        workers = self.num_workers if self.num_workers is not None else (os.cpu_count() or 1)
        if workers > 1:
            with ProcessPoolExecutor(min(workers, len(args))) as pool:
                results = list(pool.map(_task, args))
        else:
            results = [_task(a) for a in args]
        out = dict(zip(tasks, results, strict=True))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
            np.savez_compressed(tmp, **{f"{c}_{s}": a for (c, s), a in out.items()})
            tmp.replace(cache)
        return out, labels[val_idx]

    def eval_sets(self) -> list[EvalSet]:
        sets, labels = self.corrupted()
        transform = eval_transform(self.img_size, self.mean, self.std, self.crop_pct)
        return [
            EvalSet(f"{self.name}/{c}/{s}", SeededTransformDataset(ArrayImages(a, labels), transform),
                    corruption=c, severity=s)
            for (c, s), a in sets.items()
        ]
