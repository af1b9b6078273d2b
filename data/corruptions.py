"""The common corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019), applied on the fly.

The pixels come from ``imagecorruptions`` (the corruption code of the ImageNet-C paper, packaged by
Michaelis et al. 2019); we install its maintained fork ``imagecorruptions-imaug``, which imports the same
module: the original 1.1.2 imports ``pkg_resources``, gone from current setuptools, and fails to import.

Each corrupted image is a function of (image, corruption, severity, seed) alone: the library draws from
numpy's global generator (glass blur and impulse noise from their own ``seed``), so :func:`corrupt`
seeds both and restores the caller's state, and every data loader worker, rank and rerun gets the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data.sampling import sample_seed
from mixerlab.errors import ConfigError

# The 15 corruptions of the benchmark, in the paper's order (noise, blur, weather, digital).
IMAGENET_C = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)

# AlexNet's top-1 error (fraction) on each ImageNet-C corruption, averaged over the five severities: the
# denominators of the corruption error CE_c = sum_s E_s,c(f) / sum_s E_s,c(AlexNet), and mCE = mean_c CE_c.
# Source: Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
# Perturbations" (ICLR 2019), the AlexNet row of its ImageNet-C results; the same numbers are in the
# evaluation script of the paper's repository (hendrycks/robustness, ImageNet-C/test.py).
ALEXNET_ERROR = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
MIN_SIZE = 32  # the library refuses smaller images
SEEDED = ("glass_blur", "impulse_noise")  # draw from their own ``seed`` argument, not numpy's global state


def check_corruptions(corruptions: Sequence[str], severities: Sequence[int], key: str = "data") -> None:
    """Fail at config time, naming the key, for an unknown corruption or severity."""
    unknown = [c for c in corruptions if c not in IMAGENET_C]
    if unknown or not corruptions:
        raise ConfigError(
            f"{key}.corruptions={list(corruptions)}: unknown {unknown or 'empty list'}; choose from "
            f"{', '.join(IMAGENET_C)}"
        )
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise ConfigError(f"{key}.severities={list(severities)}: severities are 1..5")
    _library()


def _library():
    try:
        import imagecorruptions
    except ImportError as error:  # pragma: no cover - a dependency of the project
        raise ConfigError(
            f"the -C sets need the corruption library: pip install imagecorruptions-imaug ({error})"
        ) from error
    return imagecorruptions


def corruption_seed(corruption: str, severity: int, index: int, base_seed: int = 0) -> int:
    """A seed per (corruption, severity, image): neighbouring images and corruptions draw unrelated noise."""
    return sample_seed(base_seed * 1_000 + IMAGENET_C.index(corruption) * 10 + severity, 0, index)


def corrupt(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8, H, W >= 32 -> the corrupted (H, W, 3) uint8, deterministic for ``seed``."""
    library = _library()
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        # these two take their own seed (glass blur's shuffle, scikit-image's salt-and-pepper generator)
        extra = {"seed": seed} if corruption in SEEDED else {}
        return library.corrupt(image, corruption_name=corruption, severity=severity, **extra)
    finally:
        np.random.set_state(state)
