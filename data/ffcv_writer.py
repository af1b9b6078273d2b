"""Write FFCV betons from an ImageNet-layout tree into ``OUT``.

    OUT/train.beton, OUT/val.beton    images + labels (sorted wnids, as the folder pipeline)
    OUT/train.files.txt, ...          the source file and label of each beton index, in order
    OUT/dataset.json                  class names, counts, writer settings
    OUT/bad_files.txt                 source files left out, with the reason

Steps per split: list the class folders (:mod:`data.image_tree`; labels = sorted wnids, as the folder
pipeline), verify every file in a process pool (JPEGs parsed at 1/8 scale: cheap, and truncation still
shows), then write the decodable files with ffcv's ``DatasetWriter`` (``RGBImageField`` in
``proportion`` mode: each image stored as JPEG with ``compress_probability``, else raw pixels, after
resizing its longer side to ``max_resolution``; ffcv-imagenet used 500 px and 0.5 for ResNet-50).

Bad files are never written: each is named in ``OUT/bad_files.txt`` (``path<TAB>reason``) and counted in
``dataset.json``. Splits whose class sets differ fail before anything is written. Betons are written to
a temporary name and renamed, so a crash never leaves a half-written ``train.beton`` behind.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.image_tree import BadFile, load_rgb, scan_tree, verify_images
from mixerlab.errors import BadImageError, DatasetError
from mixerlab.run import atomic_write_text


class BetonSource:
    """The indexable dataset ffcv's writer processes read: ``(HxWx3 uint8 array, label)``.

    A file that fails to decode here was readable during verification (it changed since): ffcv's writer
    hangs when a worker raises, so the failure is recorded in ``error_log`` and a placeholder returned;
    :func:`write_split` then deletes the beton and fails.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], error_log: str, seed: int = 0) -> None:
        self.samples = list(samples)
        self.error_log = error_log
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        # ffcv draws "store as JPEG?" from np.random right after this call, in this process: seeding per
        # sample makes the beton's byte content a function of the source tree and the seed alone
        np.random.seed((self.seed * 1_000_003 + index) % (1 << 32))
        try:
            return np.asarray(load_rgb(path)), label
        except BadImageError as error:
            with open(self.error_log, "a") as log:
                log.write(f"{path}\t{error}\n")
            return np.zeros((1, 1, 3), np.uint8), label


def write_split(
    samples: Sequence[tuple[str, int]],
    beton: Path,
    max_resolution: int | None,
    compress_probability: float,
    jpeg_quality: int,
    num_workers: int,
    seed: int,
) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {
        "image": RGBImageField(
            write_mode="proportion",
            max_resolution=max_resolution,
            compress_probability=compress_probability,
            jpeg_quality=jpeg_quality,
        ),
        "label": IntField(),
    }
    tmp = beton.with_name(f".{beton.name}.{os.getpid()}.tmp")
    error_log = Path(tempfile.mkstemp(prefix="ffcv-write-errors-")[1])
    try:
        print(f"writing {beton} ({len(samples)} images)", flush=True)
        writer = DatasetWriter(str(tmp), fields, num_workers=num_workers)
        writer.from_indexed_dataset(
            BetonSource(samples, str(error_log), seed),
            chunksize=max(1, min(100, len(samples) // max(1, 4 * num_workers))),
        )
        errors = error_log.read_text().strip()
        if errors:
            raise BadImageError(
                f"files changed while {beton} was written and no longer decode "
                f"(the beton was not kept; run again):\n{errors}"
            )
        tmp.replace(beton)
    finally:
        tmp.unlink(missing_ok=True)
        error_log.unlink(missing_ok=True)


def write_betons(
    src: str | os.PathLike,
    out: str | os.PathLike,
    max_resolution: int | None = 512,
    compress_probability: float = 0.5,
    jpeg_quality: int = 90,
    num_workers: int | None = None,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
    verify_cache: str | None = None,
) -> dict:
    """Write one beton per split into ``out``; return the ``dataset.json`` record."""
    from data.imagenet_ffcv import require_ffcv

    ffcv = require_ffcv()
    if not 0.0 <= compress_probability <= 1.0:
        raise ValueError(f"--compress-probability={compress_probability} must be in [0, 1]")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality={jpeg_quality} must be in 1..100")
    num_workers = num_workers or os.cpu_count() or 1
    listing = scan_tree(src, splits, num_classes=None, root_key="--src")  # fails on layout errors first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "format": "mixerlab-ffcv-1",
        "source": str(Path(src).resolve()),
        "classes": next(iter(listing.values())).classes,
        "splits": {},
        "writer": {
            "max_resolution": max_resolution,
            "compress_probability": compress_probability,
            "jpeg_quality": jpeg_quality,
            "seed": seed,
            "ffcv": getattr(ffcv, "__version__", "?"),
        },
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    all_bad: list[BadFile] = []
    for name, split in listing.items():
        paths = [p for p, _ in split.samples]
        bad = split.stray + verify_images(
            paths, num_workers=num_workers, cache_dir=verify_cache, progress=True
        )
        dropped = {b.path for b in bad}
        good = [s for s in split.samples if s[0] not in dropped]
        if not good:
            raise DatasetError(f"{split.path} has no decodable images ({len(bad)} bad files)")
        write_split(
            good, out / f"{name}.beton", max_resolution, compress_probability, jpeg_quality, num_workers, seed
        )
        # which file each beton index came from (and its label): provenance for every sample
        (out / f"{name}.files.txt").write_text(
            "".join(f"{os.path.relpath(p, split.path)}\t{label}\n" for p, label in good)
        )
        record["splits"][name] = {
            "beton": f"{name}.beton",
            "files": f"{name}.files.txt",
            "samples": len(good),
            "bad_files": len(bad),
        }
        all_bad += bad
        if bad:
            print(f"{name}: left out {len(bad)} bad file(s), listed in {out / 'bad_files.txt'}", flush=True)
    (out / "bad_files.txt").write_text("".join(b.line() + "\n" for b in all_bad))
    atomic_write_text(out / "dataset.json", json.dumps(record, indent=1))
    return record
