"""Write a generated task as an ImageNet-style folder tree, the form every image pipeline reads.

    <root>/train/<class>/<index>.png
    <root>/val/<class>/<index>.png
    <root>/export.json        what was written, from which config

Class folders sort in label order (ImageFolder and the FFCV writer assign labels by sorted folder name),
and images are written losslessly (grayscale PNG), so a pipeline reading the folder sees the generator's
exact pixels. A data module offers ``split_arrays(split, epochs)`` and ``class_names`` to be exported.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mixerlab.run import atomic_write_text


def write_image_folder(
    root: str | Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    info: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``{split: (uint8 images (n, H, W), labels (n,))}`` under ``root``; returns ``root``.

    The tree is built next to ``root`` and renamed into place at the end, so an interrupted export never
    leaves a half-written dataset under ``root``.
    """
    names = list(class_names)
    if names != sorted(names) or len(set(names)) != len(names):
        raise ValueError(
            f"class names {names} must be distinct and sorted, or folder order would relabel them"
        )
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists: choose a new directory or pass overwrite=True (--overwrite)")
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    for split, (images, labels) in splits.items():
        if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
            raise ValueError(
                f"{split}: expected uint8 images (n, H, W) and n labels, got {images.shape} {images.dtype}"
            )
        for name in names:
            (partial / split / name).mkdir(parents=True, exist_ok=True)
        width = len(str(max(len(images) - 1, 0)))
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image, mode="L").save(partial / split / names[int(label)] / f"{i:0{width}d}.png")
        counts[split] = {name: int((labels == c).sum()) for c, name in enumerate(names)}
    atomic_write_text(
        partial / "export.json", json.dumps({**(info or {}), "classes": names, "counts": counts}, indent=2)
    )
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    return root
