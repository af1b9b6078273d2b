"""``data=imagenet_folder``: ImageNet-1k (or any tree of that layout) read from class folders.

    ROOT/train/<wnid>/*.JPEG      labels: sorted wnids -> 0..999 (the same map the FFCV writer uses)
    ROOT/val/<wnid>/*.JPEG

Train transform: the DeiT recipe through timm's ``create_transform`` (RandomResizedCrop bicubic, flip,
RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25; ``data/transforms.py``), each sample under
its own seed (``data/sampling.py``). Eval: resize to ``img_size / crop_pct``, centre-crop ``img_size``.
Repeated augmentation (x3 in DeiT) applies when training on more than one process.

Bad files (see ``data/image_tree.py``): stray non-images are found by the listing at construction;
files that do not decode are met lazily by :class:`FolderImages`, or all at once with ``verify=true``.
``bad_files=skip`` warns naming each file, appends it to ``<run dir>/bad_files.txt`` and fills its slot
with the next file of the listing (batches keep their size, Mixup needs even batches); ``bad_files=fail``
raises naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from data.base import ImageDataModule
from data.image_tree import (
    BadFile,
    BadImageError,
    DatasetError,
    Split,
    default_cache_dir,
    load_rgb,
    scan_tree,
    verify_images,
)
from data.sampling import SeededTransformDataset
from data.transforms import AugmentConfig, eval_transform, train_transform
from mixerlab.errors import ConfigError

BAD_FILE_POLICIES = ("skip", "fail")


def check_rgb_source(in_chans: int, bad_files: str, source: str) -> None:
    """The checks every ImageNet pipeline makes before anything is read: RGB only, a known bad-file policy."""
    if in_chans != 3:
        raise ConfigError(f"data.in_chans={in_chans}: {source} hold RGB images, set data.in_chans=3")
    if bad_files not in BAD_FILE_POLICIES:
        raise ConfigError(f"data.bad_files={bad_files!r} must be one of {list(BAD_FILE_POLICIES)}")


class FolderImages:
    """``(RGB PIL image, label)`` per listed file; files that do not decode meet the bad-file policy."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        bad_files: str = "skip",
        log_path: str | None = None,
        max_consecutive_bad: int = 32,
    ) -> None:
        self.samples = list(samples)
        self.bad_files = bad_files
        self.log_path = log_path
        self.max_consecutive_bad = max_consecutive_bad
        self.skipped: dict[str, str] = {}  # this process's bad files, path -> reason

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for offset in range(self.max_consecutive_bad):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return load_rgb(path), label
            except BadImageError as error:
                if self.bad_files == "fail":
                    raise BadImageError(
                        f"{error} (data.bad_files=fail: remove or replace the file, "
                        f"or set data.bad_files=skip)"
                    ) from error
                self._skip(BadFile(path, str(error).split(": ", 1)[-1]))
        raise BadImageError(
            f"{self.max_consecutive_bad} files in a row from {self.samples[index][0]} do not "
            f"decode: is the dataset readable?"
        )

    def _skip(self, bad: BadFile) -> None:
        if bad.path in self.skipped:
            return
        self.skipped[bad.path] = bad.reason
        warnings.warn(
            f"skipped unreadable image {bad.path}: {bad.reason} (data.bad_files=skip; its slot "
            f"gets the next file)",
            stacklevel=3,
        )
        if self.log_path:
            # one short append per file: atomic under O_APPEND, so worker processes do not interleave lines
            with open(self.log_path, "a") as log:
                log.write(bad.line() + "\n")


def log_bad_files(bad: Sequence[BadFile], log_path: str | None) -> None:
    if log_path and bad:
        with open(log_path, "a") as log:
            log.writelines(b.line() + "\n" for b in bad)


def apply_bad_file_policy(
    bad: Sequence[BadFile], policy: str, what: str, log_path: str | None = None
) -> None:
    """Name and count ``bad`` files: a warning (skip) or a DatasetError naming them (fail)."""
    if not bad:
        return
    names = "\n  ".join(b.line() for b in bad[:20]) + (
        f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    )
    if policy == "fail":
        raise DatasetError(
            f"{len(bad)} bad file(s) {what} (data.bad_files=fail; remove them or set "
            f"data.bad_files=skip):\n  {names}"
        )
    log_bad_files(bad, log_path)
    where = f"; all listed in {log_path}" if log_path else ""
    warnings.warn(f"skipping {len(bad)} bad file(s) {what}{where}:\n  {names}", stacklevel=2)


class ImageNetFolderDataModule(ImageDataModule):
    def __init__(
        self,
        root: str | None,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        batch_size: int = 64,
        train_dir: str = "train",
        val_dir: str = "val",
        crop_pct: float = 0.875,
        eval_interpolation: str = "bicubic",
        augment: dict | None = None,
        bad_files: str = "skip",
        verify: bool = False,
        verify_cache: str | None = None,
        repeated_aug: int = 3,
        **kwargs,
    ) -> None:
        check_rgb_source(in_chans, bad_files, "ImageNet folders")
        super().__init__(
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
            batch_size=batch_size,
            repeated_aug=repeated_aug,
            **kwargs,
        )
        self.root = root
        self.crop_pct = crop_pct
        self.eval_interpolation = eval_interpolation
        self.augment = AugmentConfig(**(augment or {}))
        self.bad_files = bad_files
        self.verify = verify
        self.verify_cache = verify_cache
        # the cheap listing runs here, so a wrong path or layout fails before the model is trained
        self.splits: dict[str, Split] = scan_tree(root, (train_dir, val_dir), num_classes)
        self.train_split, self.val_split = self.splits[train_dir], self.splits[val_dir]
        for split in (self.train_split, self.val_split):
            if not split.samples:
                raise DatasetError(
                    f"{split.path} has {len(split.classes)} class folders but no image files "
                    f"(extensions: .JPEG, .jpg, .png, ...)"
                )
            if split.empty_classes:
                warnings.warn(
                    f"{split.path}: {len(split.empty_classes)} class folder(s) hold no images: "
                    f"{', '.join(split.empty_classes[:10])}",
                    stacklevel=2,
                )
        self.stray = self.train_split.stray + self.val_split.stray
        apply_bad_file_policy(self.stray, bad_files, f"that are not images under {root}")

    @property
    def classes(self) -> list[str]:
        return self.train_split.classes

    def train_samples_per_epoch(self) -> int:
        """The listed training files (with ``verify``, a few undecodable ones may drop out at ``setup``)."""
        return len(self.train_set) if self.train_set is not None else len(self.train_split.samples)

    def bad_files_log(self) -> str | None:
        """``<run dir>/bad_files.txt`` when run by a Trainer (its default_root_dir is the run directory)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        return str(Path(trainer.default_root_dir) / "bad_files.txt")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self.train_split.samples, self.val_split.samples
        log = self.bad_files_log()
        log_bad_files(self.stray, log)
        if self.verify:
            paths = [p for p, _ in train + val]
            bad = verify_images(
                paths,
                num_workers=self.num_workers,
                cache_dir=self.verify_cache or default_cache_dir(),
                progress=True,
            )
            apply_bad_file_policy(bad, self.bad_files, f"that do not decode under {self.root}", log)
            dropped = {b.path for b in bad}
            train = [s for s in train if s[0] not in dropped]
            val = [s for s in val if s[0] not in dropped]
        self.train_set = SeededTransformDataset(
            FolderImages(train, self.bad_files, log),
            train_transform(self.img_size, self.mean, self.std, self.augment),
        )
        self.val_set = SeededTransformDataset(
            FolderImages(val, self.bad_files, log),
            eval_transform(self.img_size, self.mean, self.std, self.crop_pct, self.eval_interpolation),
        )
