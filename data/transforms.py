"""Image transforms shared by every PIL-based pipeline (embedded digits, ImageNet folders, proxy tasks).

Built with timm's ``create_transform`` so the DeiT recipe's augmentation (RandomResizedCrop bicubic, flip,
RandAugment ``rand-m9-mstd0.5-inc1``, random erasing) is one set of config values for every dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image
from timm.data import auto_augment, create_transform


def posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's RandAugment posterize, with its 0-bit case kept working.

    ``rand-m9-mstd0.5-inc1`` draws magnitudes up to 10, where PosterizeIncreasing keeps 0 bits (a black
    image, as in the TF reference). Pillow 13 rejects ``ImageOps.posterize(img, 0)`` with ValueError, which
    crashed the first pass over 640 images of scripts/bench_data.py (timm 1.0.31). Same output as older
    Pillow.
    """
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return _timm_posterize(img, bits_to_keep, **kwargs)


_timm_posterize = auto_augment.posterize
for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    auto_augment.NAME_TO_OP[_name] = posterize


@dataclass
class AugmentConfig:
    """Train-time augmentation values (DeiT defaults: ``../shared/docs/REFERENCE.md`` section 4)."""

    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float | None = 0.3
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    interpolation: str = "bicubic"
    extra: dict = field(default_factory=dict)


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], aug: AugmentConfig):
    return create_transform(
        input_size=img_size,
        is_training=True,
        scale=tuple(aug.scale),
        ratio=tuple(aug.ratio),
        hflip=aug.hflip,
        auto_augment=aug.auto_augment,
        color_jitter=aug.color_jitter,
        re_prob=aug.re_prob,
        re_mode=aug.re_mode,
        re_count=aug.re_count,
        interpolation=aug.interpolation,
        mean=tuple(mean),
        std=tuple(std),
        **aug.extra,
    )


def eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float,
    interpolation: str = "bicubic",
):
    """Resize the short side to ``img_size / crop_pct``, then centre-crop ``img_size`` (DeiT: 0.875)."""
    return create_transform(
        input_size=img_size,
        is_training=False,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
