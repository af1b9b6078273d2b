"""Evaluation-only data: ImageNet's shifted test sets over their standard folder layouts, and -C on the fly.

    data=imagenet_v2       ROOT/<0..999>/*.jpeg           class folders named by class index (ImageNetV2)
    data=imagenet_real     ROOT/[<wnid>/]ILSVRC2012_val_<n>.JPEG + real.json: ReaL's label sets
    data=imagenet_a / _r   ROOT/<wnid>/*                  200 wnid folders; only their 200 logits are scored
    data=imagenet_sketch   ROOT/<wnid>/*                  1000 wnid folders
    data=imagenet_c        ROOT/<val_dir>/<wnid>/*        val corrupted on the fly (data/corruptions.py)

Labels follow the model's: class ``i`` is the ``i``-th of ``classes`` (``imagenet1k``: timm's ImageNet
synset list, the sorted wnids every ImageNet-1k folder model here trains with; or a folder whose sorted
sub-folders are the classes, such as the training split the run used). The 200-class subsets come from the
index files timm ships (``timm/data/_info/imagenet_{a,r}_indices.txt``), the ReaL labels from timm's copy of
``real.json`` unless ``real_labels`` names another.

Every set lists its folder at construction (no image is opened) and refuses one whose classes are not the
expected ones, naming the folder and what is missing or extra, before a model is built or loaded.

A data module here has no training split; :meth:`eval_sets` returns what :mod:`mixerlab.evaluation` scores.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.corruptions import check_corruptions, corrupt, corruption_seed
from data.image_tree import DatasetError, Split, list_split
from data.imagenet_folder import FolderImages, apply_bad_file_policy, check_rgb_source
from data.sampling import SeededTransformDataset
from data.transforms import eval_transform
from mixerlab.errors import ConfigError


@dataclass
class EvalSet:
    """One scored set: ``dataset[i] -> (image tensor, target)``.

    ``target`` is a class index, or with ``multi_label`` a 0/1 row over the classes (ReaL: a prediction is
    right when it is any of the image's labels; images without a label are not counted). ``class_subset``:
    score only these logits (the 200 classes of ImageNet-A/R). ``corruption``/``severity``: a -C member.
    """

    name: str
    dataset: Dataset
    class_subset: list[int] | None = None
    multi_label: bool = False
    corruption: str | None = None
    severity: int | None = None


# ---------------------------------------------------------------------------------------------- class lists
def timm_info(name: str) -> str:
    """A text file timm ships in ``timm/data/_info`` (synset lists, subset indices, ReaL labels)."""
    return resources.files("timm.data").joinpath("_info", name).read_text()


def class_list(classes: str | Sequence[str], key: str = "data.classes") -> list[str]:
    """``imagenet1k`` (timm's 1000 synsets), a folder (its sorted sub-folders) or a list of names."""
    if isinstance(classes, str):
        if classes == "imagenet1k":
            return timm_info("imagenet_synsets.txt").split()
        folder = Path(classes).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{key}={classes!r}: use imagenet1k, a folder of class folders, or a list")
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    return list(classes)


def subset_indices(subset: str) -> list[int]:
    """ImageNet-A's or -R's 200 classes as indices into ImageNet-1k's 1000 (timm's index files)."""
    return [int(v) for v in timm_info(f"imagenet_{subset}_indices.txt").split()]


def few(names: Sequence[str], n: int = 5) -> str:
    names = sorted(names)
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def check_folders(split: Split, expected: Sequence[str], what: str) -> None:
    """The split's class folders must be exactly ``expected``; else name the folder and the mismatch."""
    found, wanted = set(split.classes), set(expected)
    if found != wanted:
        raise DatasetError(
            f"{split.path} is not {what}: expected {len(wanted)} class folders, found {len(found)}; "
            f"missing: {few(wanted - found)}; unexpected: {few(found - wanted)}"
        )


def relabel(split: Split, label_of: dict[str, int]) -> list[tuple[str, int]]:
    """Samples with labels from folder names (list_split numbers the sorted folders instead)."""
    return [(path, label_of[split.classes[i]]) for path, i in split.samples]


# ---------------------------------------------------------------------------------------------- the base
class EvalImageData:
    """What every evaluation-only set shares: the model's input settings, loader sizes, the eval transform.

    ``img_size``, ``in_chans``, ``mean``, ``std`` and ``num_classes`` are the model's (``eval.py`` copies them
    from the run), so the set is read the way the model was trained to see images.
    """

    def __init__(
        self,
        root: str | None,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        classes: str | Sequence[str] = "imagenet1k",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 8,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        crop_pct: float = 0.875,
        eval_interpolation: str = "bicubic",
        bad_files: str = "skip",
        **unused,
    ) -> None:
        check_rgb_source(in_chans, bad_files, "ImageNet test sets")
        if root in (None, "", "None", "null"):
            raise DatasetError(f"data.root is not set: pass data.root=/path/to/the/{type(self).__name__} set")
        self.root = Path(root).expanduser()
        self.img_size = img_size
        self.num_classes = num_classes
        self.classes = class_list(classes)
        if len(self.classes) != num_classes:
            raise ConfigError(
                f"data.classes has {len(self.classes)} classes but the model has {num_classes} outputs: "
                f"point data.classes at the class folders the model was trained on"
            )
        self.batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_pct = crop_pct
        self.eval_interpolation = eval_interpolation
        self.bad_files = bad_files

    def transform(self):
        return eval_transform(self.img_size, self.mean, self.std, self.crop_pct, self.eval_interpolation)

    def list_folder(self, path: Path) -> Split:
        split = list_split(path)
        apply_bad_file_policy(split.stray, self.bad_files, f"that are not images under {path}")
        if not split.samples:
            raise DatasetError(f"{path} holds no image files")
        return split

    def images(self, samples: Sequence[tuple[str, int]]) -> SeededTransformDataset:
        return SeededTransformDataset(FolderImages(samples, self.bad_files), self.transform())

    def eval_sets(self) -> list[EvalSet]:
        raise NotImplementedError


class ClassFolderSet(EvalImageData):
    """``ROOT/<wnid>/*`` with exactly the model's classes (``data=imagenet_sketch``)."""

    what = "an ImageNet-1k-class folder set"

    def __init__(self, root: str | None, name: str = "sketch", **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.name = name
        self.split = self.list_folder(self.root)
        check_folders(self.split, self.classes, f"{self.what} ({len(self.classes)} wnid folders)")

    def eval_sets(self) -> list[EvalSet]:
        label_of = {c: i for i, c in enumerate(self.classes)}
        return [EvalSet(self.name, self.images(relabel(self.split, label_of)))]


class IndexFolderSet(EvalImageData):
    """``ROOT/<class index>/*``, folders ``0 .. num_classes-1`` (ImageNetV2, ``data=imagenet_v2``)."""

    def __init__(self, root: str | None, name: str = "v2", **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.name = name
        self.split = self.list_folder(self.root)
        expected = [str(i) for i in range(self.num_classes)]
        check_folders(self.split, expected, f"an ImageNetV2-layout set (folders 0..{self.num_classes - 1})")

    def eval_sets(self) -> list[EvalSet]:
        label_of = {str(i): i for i in range(self.num_classes)}
        return [EvalSet(self.name, self.images(relabel(self.split, label_of)))]


class SubsetFolderSet(EvalImageData):
    """``ROOT/<wnid>/*`` over a 200-class subset of ImageNet-1k (``data=imagenet_a``, ``imagenet_r``).

    Only the subset's logits are scored (the protocol of both papers): the prediction is the arg-max over
    those 200 outputs of the 1000-way model.
    """

    def __init__(self, root: str | None, subset: str = "a", name: str | None = None, **kwargs) -> None:
        super().__init__(root, **kwargs)
        if subset not in ("a", "r"):
            raise ConfigError(f"data.subset={subset!r}: a (ImageNet-A) or r (ImageNet-R)")
        if self.num_classes != 1000:
            raise ConfigError(
                f"ImageNet-{subset.upper()} scores 200 of ImageNet-1k's 1000 classes; this model has "
                f"{self.num_classes} outputs"
            )
        self.name = name or subset
        self.indices = subset_indices(subset)
        self.wnids = [self.classes[i] for i in self.indices]
        self.split = self.list_folder(self.root)
        what = f"an ImageNet-{subset.upper()}-layout set (its 200 wnid folders)"
        check_folders(self.split, self.wnids, what)

    def eval_sets(self) -> list[EvalSet]:
        label_of = {c: i for i, c in enumerate(self.classes)}
        samples = relabel(self.split, label_of)
        return [EvalSet(self.name, self.images(samples), class_subset=list(self.indices))]


VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.\w+$", re.IGNORECASE)


class MultiLabelImages(Dataset):
    """(image, 0/1 row over the classes) from a list of (path, label set)."""

    def __init__(self, images: SeededTransformDataset, label_sets: Sequence[Sequence[int]],
                 num_classes: int) -> None:
        self.images = images
        self.targets = torch.zeros(len(label_sets), num_classes, dtype=torch.bool)
        for row, labels in enumerate(label_sets):
            self.targets[row, list(labels)] = True

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        image, _ = self.images[index]
        return image, self.targets[index]


class RealLabelSet(EvalImageData):
    """ImageNet val scored against ReaL's label sets (Beyer et al. 2020, ``data=imagenet_real``).

    ``ROOT`` holds the val images named ``ILSVRC2012_val_<n>.JPEG``, flat or in wnid folders (then the
    folders must be the model's classes). ``real_labels``: the json list of label sets (``null``: timm's
    copy). Images whose label set is empty are left out, as in the paper and timm's ``RealLabelsImagenet``.
    """

    def __init__(self, root: str | None, real_labels: str | None = None, name: str = "real", **kwargs):
        super().__init__(root, **kwargs)
        self.name = name
        text = Path(real_labels).expanduser().read_text() if real_labels else timm_info(
            "imagenet_real_labels.json")
        self.labels: list[list[int]] = json.loads(text)
        entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        if any(e.is_dir() and not e.name.startswith(".") for e in entries):
            split = self.list_folder(self.root)
            check_folders(split, self.classes, "an ImageNet val tree (wnid folders)")
            paths = [p for p, _ in split.samples]
        else:
            paths = [e.path for e in entries if not e.is_dir() and VAL_NAME.search(e.name)]
        if not paths:
            raise DatasetError(f"{self.root} holds no ILSVRC2012_val_<n> images")
        unnamed = [p for p in paths if not VAL_NAME.search(os.path.basename(p))]
        beyond = [p for p in paths if VAL_NAME.search(os.path.basename(p)) and
                  int(VAL_NAME.search(os.path.basename(p)).group(1)) > len(self.labels)]
        if unnamed or beyond:
            raise DatasetError(
                f"{self.root}: ReaL labels images by their val file name ILSVRC2012_val_<n> (n <= "
                f"{len(self.labels)}); not so: {few([os.path.basename(p) for p in unnamed + beyond])}"
            )
        number = [int(VAL_NAME.search(os.path.basename(p)).group(1)) for p in paths]
        kept = [(p, self.labels[n - 1]) for p, n in zip(paths, number, strict=True) if self.labels[n - 1]]
        self.skipped_unlabelled = len(paths) - len(kept)
        self.samples = [(p, 0) for p, _ in kept]
        self.label_sets = [labels for _, labels in kept]

    def eval_sets(self) -> list[EvalSet]:
        dataset = MultiLabelImages(self.images(self.samples), self.label_sets, self.num_classes)
        return [EvalSet(self.name, dataset, multi_label=True)]


# ---------------------------------------------------------------------------------------------- -C on the fly
class CorruptedImages(Dataset):
    """``source[i]`` (PIL RGB, label) -> resize + centre-crop -> corrupt -> normalised tensor, per image seed.

    ImageNet-C corrupts the 224-px centre crop of each val image (resize 256, crop 224); so does this, at
    the model's ``img_size`` (which must be at least 32, the library's minimum).
    """

    def __init__(self, source, crop, to_tensor, corruption: str, severity: int, seed: int = 0) -> None:
        self.source, self.crop, self.to_tensor = source, crop, to_tensor
        self.corruption, self.severity, self.seed = corruption, severity, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, label = self.source[index]
        pixels = np.asarray(self.crop(image))
        seed = corruption_seed(self.corruption, self.severity, index, self.seed)
        out = corrupt(pixels, self.corruption, self.severity, seed)
        return self.to_tensor(Image.fromarray(out)), label


class CorruptedFolderSet(EvalImageData):
    """ImageNet-C on the fly from ImageNet val (``data=imagenet_c``): a set per corruption x severity.

    ``ROOT/<val_dir>/<wnid>/*`` must hold the model's classes. mCE: :mod:`mixerlab.evaluation`.
    """

    normalise = "alexnet"

    def __init__(
        self,
        root: str | None,
        val_dir: str = "val",
        corruptions: Sequence[str] = (),
        severities: Sequence[int] = (1, 2, 3, 4, 5),
        name: str = "c",
        seed: int = 0,
        **kwargs,
    ) -> None:
        check_corruptions(corruptions, severities)
        super().__init__(root, **kwargs)
        if self.img_size < 32:
            raise ConfigError(f"data.img_size={self.img_size}: the corruptions need images of 32 px or more "
                              "(the model's input size)")
        self.name, self.seed = name, seed
        self.corruptions, self.severities = list(corruptions), list(severities)
        self.split = self.list_folder(self.root / val_dir)
        check_folders(self.split, self.classes, "an ImageNet val tree (wnid folders)")

    def eval_sets(self) -> list[EvalSet]:
        import torchvision.transforms as T
        from timm.data.transforms import str_to_interp_mode

        label_of = {c: i for i, c in enumerate(self.classes)}
        source = FolderImages(relabel(self.split, label_of), self.bad_files)
        resize = int(self.img_size / self.crop_pct)
        crop = T.Compose([T.Resize(resize, interpolation=str_to_interp_mode(self.eval_interpolation)),
                          T.CenterCrop(self.img_size)])
        to_tensor = T.Compose([T.ToTensor(), T.Normalize(self.mean, self.std)])
        return [
            EvalSet(f"{self.name}/{c}/{s}", CorruptedImages(source, crop, to_tensor, c, s, self.seed),
                    corruption=c, severity=s)
            for c in self.corruptions
            for s in self.severities
        ]
