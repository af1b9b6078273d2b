"""A small ImageNet-layout tree of real JPEGs, for tests and for trying the pipelines without ImageNet.

``write_fake_imagenet(out)`` writes ``out/{train,val}/<wnid>/*.JPEG`` (deterministic for a seed): images
of varied sizes and aspect ratios whose class shows in their colour and stripe direction, so a tiny
model learns something. With ``bad_files=True`` it adds what real ImageNet and user folders contain:
decodable oddities (a PNG named ``.JPEG``, a CMYK and a grayscale JPEG) and undecodable files (a
truncated JPEG, a zero-byte file, ``.DS_Store`` and ``notes.txt``). ``out/fixture.json`` lists them.

``data=fake_imagenet`` trains on such a tree, writing it on first use.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from data.imagenet_folder import ImageNetFolderDataModule
from mixerlab.run import atomic_write_text


def wnid(index: int) -> str:
    return f"n{10_000_000 + 1_111 * index:08d}"


def class_image(
    rng: np.random.Generator, label: int, num_classes: int, size: tuple[int, int], noise: float = 4.0
) -> Image.Image:
    """An RGB image of ``size`` (w, h): class colour, class stripe angle, Gaussian noise of std ``noise``."""
    w, h = size
    hue = label / num_classes
    base = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)]) * 70 + 128
    angle = np.pi * label / num_classes
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # 1.5-3 stripes across the image whatever its size: photo-like low frequencies, so resampling
    # methods (PIL bicubic vs FFCV's area) agree and pipeline comparisons measure the pipelines
    period = min(w, h) / rng.uniform(1.5, 3)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
    pixels = base[None, None, :] + 45 * stripes[..., None] + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_fake_imagenet(
    out: str | os.PathLike,
    classes: int = 4,
    train_per_class: int = 6,
    val_per_class: int = 2,
    seed: int = 0,
    min_size: int = 40,
    max_size: int = 96,
    bad_files: bool = False,
    noise: float = 4.0,
) -> dict:
    """Write the tree and ``fixture.json``; return the manifest (counts, decodable oddities, bad files).

    ``noise`` sets how much JPEG data an image carries: 4 keeps test files small; about 28 gives
    ImageNet's ~110 KB per 400 px photo, which makes decoding cost what it costs on ImageNet.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = [wnid(i) for i in range(classes)]
    manifest: dict = {"classes": names, "seed": seed, "noise": noise, "odd": {}, "bad": {}}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(names):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                size = tuple(int(s) for s in rng.integers(min_size, max_size + 1, size=2))
                image = class_image(rng, label, classes, size, noise)
                (folder / f"{name}_{split}_{i:05d}.JPEG").write_bytes(jpeg_bytes(image))
        manifest[split] = classes * per_class
    if bad_files:
        _write_bad_files(out, names, rng, manifest, min_size, max_size)
    atomic_write_text(out / "fixture.json", json.dumps(manifest, indent=1))
    return manifest


def _write_bad_files(
    out: Path, names: list[str], rng: np.random.Generator, manifest: dict, min_size: int, max_size: int
) -> None:
    def image(label: int) -> Image.Image:
        size = tuple(int(s) for s in rng.integers(min_size, max_size + 1, size=2))
        return class_image(rng, label, len(names), size)

    def odd(split: str, label: int, filename: str, kind: str, data: bytes) -> None:
        path = out / split / names[label % len(names)] / filename
        path.write_bytes(data)
        manifest["odd"][str(path.relative_to(out))] = kind
        manifest[split] += 1

    def bad(path: Path, kind: str, data: bytes) -> None:
        path.write_bytes(data)
        manifest["bad"][str(path.relative_to(out))] = kind

    png = io.BytesIO()
    image(2).save(png, format="PNG")
    cmyk = io.BytesIO()
    image(0).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    odd("train", 0, "cmyk.JPEG", "CMYK JPEG", cmyk.getvalue())
    odd("train", 1, "gray.JPEG", "grayscale JPEG", jpeg_bytes(image(1).convert("L")))
    odd("train", 2, "png_named.JPEG", "PNG named .JPEG", png.getvalue())
    odd("val", 0, "cmyk.JPEG", "CMYK JPEG", cmyk.getvalue())
    whole = jpeg_bytes(image(3))
    bad(out / "train" / names[3 % len(names)] / "truncated.JPEG", "truncated JPEG", whole[: len(whole) // 2])
    bad(out / "train" / names[0] / "empty.JPEG", "zero-byte file", b"")
    bad(out / "train" / names[1 % len(names)] / "notes.txt", "text file", b"labelling notes\n")
    bad(out / "train" / ".DS_Store", "macOS metadata beside the class folders", b"\x00\x00\x00\x01Bud1")
    bad(out / "train" / names[2 % len(names)] / ".DS_Store", "macOS metadata", b"\x00\x00\x00\x01Bud1")
    bad(out / "val" / names[1 % len(names)] / "truncated.JPEG", "truncated JPEG", whole[: len(whole) // 3])


class FakeImageNetDataModule(ImageNetFolderDataModule):
    """``data=fake_imagenet``: the folder pipeline on a generated tree (written to ``root`` if missing)."""

    def __init__(self, root: str, fixture: dict | None = None, **kwargs) -> None:
        target = Path(root)
        if not (target / "fixture.json").exists():
            # write beside and rename, so concurrent ranks or runs never read a half-written tree
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            write_fake_imagenet(tmp, classes=kwargs.get("num_classes", 4), **dict(fixture or {}))
            try:
                tmp.rename(target)
            except OSError:  # another process won the race; its tree is the same (deterministic)
                shutil.rmtree(tmp, ignore_errors=True)
        super().__init__(root=root, **kwargs)
