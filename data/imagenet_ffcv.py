"""``data=imagenet_ffcv``: ImageNet from FFCV ``.beton`` files (libffcv/ffcv; REFERENCE section 5).

    python scripts/write_ffcv.py --src /datasets/imagenet --out /datasets/imagenet_ffcv
    python train.py data=imagenet_ffcv data.root=/datasets/imagenet_ffcv

``ROOT`` holds ``train.beton``, ``val.beton``, ``dataset.json`` (class names, counts, writer settings)
and ``bad_files.txt`` (source files the writer could not decode and left out).

Pipelines. Train: ``RandomResizedCropRGBImageDecoder`` (scale 0.08-1, ratio 3/4-4/3) -> flip ->
``ToTensor`` -> ``ToDevice(non_blocking)`` -> ``ToTorchImage`` (uint8 crosses to the device, 4x fewer
bytes than float), then :class:`data.batch_augment.BatchTransform` on the device: 3-Augment, colour
jitter, normalisation, random erasing (Mixup/CutMix: the recipe). Val: ``CenterCropRGBImageDecoder``
with ``ratio=crop_pct`` (the folder pipeline's resize-then-centre-crop, in one step). Normalisation is
ours rather than ffcv's ``NormalizeImage``: its device version needs cupy, and in ffcv 1.0.2 a compiled
op after ``ToTensor`` (its CPU version) never finishes compiling (``Graph.group_operations`` loops).

Order: ``QUASI_RANDOM`` on one process (page-local reads when the data does not fit in RAM), FFCV's
``RANDOM`` when distributed (QUASI_RANDOM is not supported there), and with DeiT's repeated augmentation
on several processes, :class:`RepeatedAugmentationOrder`. The order is a function of (seed, epoch):
Lightning hands the epoch to :meth:`FFCVBatches.set_epoch`, and a run resumed from a mid-epoch
checkpoint starts that epoch where it stopped (:class:`ResumableOrder`): the same samples follow. FFCV's
decoders draw crops and flips from numba's unseeded thread-local generators, so unlike the
folder path, the FFCV path's augmentation is not bit-reproducible.

Progressive resizing (FFCV's ResNet recipe): ``progressive`` makes the decoder's output resolution a
function of the epoch. The backbone's token grid is fixed (several mixers' weights depend on it), so
batches are resized back to ``img_size`` on the device: early epochs see less detail, at the same
model cost. The compute saving progressive resizing gives CNNs does not carry over to fixed-grid ViTs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.base import ImageDataModule
from data.batch_augment import BatchTransform
from data.imagenet_folder import apply_bad_file_policy, check_rgb_source
from data.sampling import EpochSampler
from data.workers import decoder_threads
from mixerlab.errors import ConfigError, DatasetError
from mixerlab.storage import read_json_file

log = logging.getLogger("mixerlab")

FFCV_INSTALL = (
    "apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev && "
    "pip install 'ffcv==1.0.2'   (from the repository: make setup, or pip install -e '.[ffcv]')"
)
ORDERS = ("auto", "random", "quasi_random", "sequential")
# data.augment keys of the FFCV path: crop and flip on the decoder, the rest on the device (batch_augment.py)
AUGMENT_KEYS = ("scale", "ratio", "hflip", "three_augment", "color_jitter", "re_prob", "re_mode", "re_count")


def require_ffcv():
    """Import ffcv or fail with the exact install command."""
    try:
        import ffcv
        import ffcv.loader  # noqa: F401  (pulls numba, cv2 and libffcv: the parts that fail to install)
    except ImportError as error:
        raise ConfigError(
            f"data=imagenet_ffcv needs the ffcv extra, which is not importable ({error}). "
            f"Install it with:\n  {FFCV_INSTALL}"
        ) from error
    return ffcv


@dataclass(frozen=True)
class ProgressiveResolution:
    """Decoder resolution per epoch: ``start_res`` until ``start_epoch``, linear to ``end_res`` at
    ``end_epoch``, rounded to a multiple of ``multiple`` (ffcv-imagenet's ``get_resolution``)."""

    start_res: int
    end_res: int
    start_epoch: int = 0
    end_epoch: int = 1
    multiple: int = 32

    def __post_init__(self) -> None:
        if min(self.start_res, self.end_res, self.multiple) <= 0 or self.end_epoch < self.start_epoch:
            raise ConfigError(
                f"data.progressive={self}: resolutions and multiple must be positive and "
                f"end_epoch >= start_epoch"
            )

    def __call__(self, epoch: int) -> int:
        res = np.interp(epoch, [self.start_epoch, self.end_epoch], [self.start_res, self.end_res])
        return max(self.multiple, int(round(res / self.multiple)) * self.multiple)


class RepeatedAugmentationOrder:
    """An FFCV traversal order for DeiT's repeated augmentation across ranks.

    :class:`data.sampling.EpochSampler`'s order (the folder path's): each drawn index ``repeats`` times in
    a row, dealt round-robin, so its copies land on different ranks. Rank and world size come from the
    Trainer, not from ``torch.distributed``; FFCV only calls ``sample_order(epoch)``.
    """

    def __init__(self, indices: np.ndarray, seed: int, rank: int, world_size: int, repeats: int) -> None:
        self.indices = np.asarray(indices)
        self.sampler = EpochSampler(
            len(self.indices), seed=seed, rank=rank, world_size=world_size, repeats=repeats
        )

    def sample_order(self, epoch: int) -> np.ndarray:
        self.sampler.set_epoch(epoch)
        return self.indices[np.fromiter((i for i, _ in self.sampler), dtype=np.int64)]


class ResumableOrder:
    """Wraps an ffcv traversal order so that one epoch's pass starts part-way: a mid-epoch resume.

    ``resume_at(epoch, position)`` (called by :meth:`data.base.ImageDataModule._resume_sampler`, which
    first checks the checkpoint's world size and batch) drops the first ``position`` samples of that
    epoch's order, as the uninterrupted run consumed them; every other epoch is unchanged. The samples
    are the same, their crops are not (ffcv's augmentation is not seeded).
    """

    def __init__(self, inner, batch_size: int, drop_last: bool) -> None:
        self.inner = inner
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, position: int) -> None:
        self.resume = (epoch, position)

    def sample_order(self, epoch: int) -> np.ndarray:
        order = self.inner.sample_order(epoch)
        if self.resume is None or self.resume[0] != epoch:
            return order
        if self.drop_last:  # ffcv cuts the full order to whole batches; cut the same samples first
            order = order[: len(order) // self.batch_size * self.batch_size]
        return order[self.resume[1] :]


class FFCVBatches:
    """What Lightning iterates: an ffcv ``Loader`` with the epoch, resolution and batch transform applied.

    Lightning calls ``dataloader.sampler.set_epoch(epoch)`` before each epoch
    (``lightning.fabric.utilities.data._set_sampler_epoch``); this object is its own ``sampler`` so that
    call reaches :meth:`set_epoch`. Yields ``(images, labels)`` on the loader's device.
    """

    def __init__(
        self,
        loader,
        transform: BatchTransform,
        decoder=None,
        resolution: ProgressiveResolution | None = None,
        name: str = "train",
    ) -> None:
        self.loader = loader
        self.transform = transform
        self.decoder = decoder
        self.resolution = resolution
        self.name = name
        self.epoch = 0
        self.sampler = self
        self.batch_sampler = None  # Lightning reads it next to ``sampler`` (e.g. to ask "is it shuffled?")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def current_resolution(self) -> int | None:
        return self.resolution(self.epoch) if self.resolution is not None else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loader.next_epoch = self.epoch  # ffcv's order is a function of (seed, epoch)
        res = self.current_resolution()
        if res is not None and self.decoder is not None:
            self.decoder.output_size = (res, res)  # buffers are re-allocated per epoch; code stays compiled
            log.info(
                "ffcv %s epoch %d: decoding at %d px, batches resized to %d px",
                self.name,
                self.epoch,
                res,
                self.transform.img_size,
            )
        iterator = iter(self.loader)
        try:
            while True:
                wait_for_batch(iterator)
                try:
                    images, labels = next(iterator)
                except StopIteration:
                    return
                yield self.transform(images), labels.reshape(-1).long()
        finally:
            iterator.close()  # stop ffcv's prefetch thread when Lightning stops early (max_steps, limits)


def wait_for_batch(iterator, poll_s: float = 0.5) -> None:
    """Block until ffcv's loader thread has the next batch ready, or raise if that thread has died.

    ffcv 1.0.2's ``EpochIterator`` thread dies on an exception and its consumer then waits forever on
    the queue; polling the thread turns that hang into an error.
    """
    queue = iterator.output_queue
    with queue.not_empty:
        while not queue._qsize():
            if not iterator.is_alive():
                raise RuntimeError(
                    f"ffcv's loader thread for {iterator.loader.fname} stopped before the end of "
                    f"the epoch (its exception is printed above)"
                )
            queue.not_empty.wait(poll_s)


def read_beton_labels(path: Path) -> np.ndarray:
    """The ``label`` field of every sample, from the beton's metadata (no image is decoded)."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    return np.asarray(reader.metadata[f"f{reader.field_names.index('label')}"]).astype(np.int64)


class ImageNetFFCVDataModule(ImageDataModule):
    def __init__(
        self,
        root: str | None,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        batch_size: int = 64,
        train_beton: str = "train.beton",
        val_beton: str = "val.beton",
        crop_pct: float = 0.875,
        os_cache: bool = True,
        order: str = "auto",
        batches_ahead: int = 3,
        augment: dict | None = None,
        progressive: dict | None = None,
        bad_files: str = "skip",
        repeated_aug: int = 3,
        device: str | None = None,
        **kwargs,
    ) -> None:
        check_rgb_source(in_chans, bad_files, "betons")
        if order not in ORDERS:
            raise ConfigError(f"data.order={order!r} must be one of {list(ORDERS)}")
        self._check_root_dir(root, train_beton, val_beton)  # before ffcv's import: seconds, a bad root none
        require_ffcv()
        super().__init__(
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
            batch_size=batch_size,
            repeated_aug=repeated_aug,
            **kwargs,
        )
        self.crop_pct = crop_pct
        self.os_cache = os_cache
        self.order = order
        self.batches_ahead = batches_ahead
        self.augment = dict(augment or {})
        if set(self.augment) - set(AUGMENT_KEYS):
            raise ConfigError(
                f"data.augment has unknown keys {sorted(set(self.augment) - set(AUGMENT_KEYS))}; "
                f"the FFCV path takes {sorted(AUGMENT_KEYS)}"
            )
        self.progressive = ProgressiveResolution(**progressive) if progressive else None
        self.device = device
        self.root, self.train_path, self.val_path = self._check_root(root, train_beton, val_beton)
        self.meta = self._check_meta(num_classes, bad_files)

    # ------------------------------------------------------------ start-up checks (before any training)
    @staticmethod
    def _check_root_dir(root, train_beton: str, val_beton: str) -> Path:
        if root in (None, "", "None", "null"):
            raise DatasetError(
                "data.root is not set: pass data.root=/path/to/betons (the --out folder of "
                "scripts/write_ffcv.py, with train.beton and val.beton) or set IMAGENET_FFCV_ROOT"
            )
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"data.root={root} does not exist or is not a directory: expected a folder with "
                f"{train_beton} and {val_beton} (write them with scripts/write_ffcv.py)"
            )
        return root

    @classmethod
    def _check_root(cls, root, train_beton: str, val_beton: str) -> tuple[Path, Path, Path]:
        root = cls._check_root_dir(root, train_beton, val_beton)
        paths = []
        for name in (train_beton, val_beton):
            path = root / name
            if not path.is_file() or path.stat().st_size == 0:
                raise DatasetError(
                    f"{path} is missing or empty: expected an FFCV beton; write it with "
                    f"python scripts/write_ffcv.py --src <imagenet folder> --out {root}"
                )
            try:
                from ffcv.reader import Reader

                reader = Reader(str(path))
                if (
                    set(reader.field_names) != {"image", "label"}
                    or len(reader.metadata) != reader.num_samples
                ):
                    raise ValueError(
                        f"fields {reader.field_names}, {len(reader.metadata)} of "
                        f"{reader.num_samples} sample records"
                    )
                table = reader.alloc_table
                if reader.num_samples and (
                    not len(table) or int((table["ptr"] + table["size"]).max()) > path.stat().st_size
                ):
                    raise ValueError("truncated: its pages end beyond the end of the file")
            except Exception as error:  # ffcv raises bare AssertionError/ValueError/IndexError on bad files
                raise DatasetError(
                    f"{path} is not a readable image/label FFCV beton ({error}): rewrite it "
                    f"with scripts/write_ffcv.py"
                ) from error
            if reader.num_samples == 0:
                raise DatasetError(f"{path} holds no samples")
            paths.append(path)
        return root, paths[0], paths[1]

    def resolve_workers(self, setting: int | str | None) -> int:
        """ffcv's decoding threads (numba): never more than the cores or numba's pool (data/workers.py)."""
        import numba

        return decoder_threads(setting, limit=numba.config.NUMBA_NUM_THREADS)

    def train_samples_per_epoch(self) -> int:
        from ffcv.reader import Reader

        return int(Reader(str(self.train_path)).num_samples)

    def _check_meta(self, num_classes: int, bad_files: str) -> dict:
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            warnings.warn(
                f"{meta_path} not found (betons not written by scripts/write_ffcv.py): class names "
                f"and the bad-file report are unknown; labels are taken as written",
                stacklevel=3,
            )
            return {}
        meta = read_json_file(meta_path, "FFCV dataset record", "rewrite the betons and it with "
                              f"python scripts/write_ffcv.py --src <imagenet folder> --out {self.root}")
        if not isinstance(meta.get("classes"), list):
            raise DatasetError(f"{meta_path} lists no classes: rewrite it with scripts/write_ffcv.py")
        if len(meta["classes"]) != num_classes:
            raise DatasetError(
                f"data.num_classes={num_classes} but {meta_path} lists {len(meta['classes'])} "
                f"classes: set data.num_classes={len(meta['classes'])}"
            )
        report = self.root / "bad_files.txt"
        if report.exists():
            from data.image_tree import BadFile

            bad = [BadFile(*line.split("\t", 1)) for line in report.read_text().splitlines() if "\t" in line]
            apply_bad_file_policy(
                bad,
                bad_files,
                f"of {meta.get('source')} that the writer left out of the betons (listed in {report})",
            )
        return meta

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    # ------------------------------------------------------------ loaders
    def _device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _ffcv_order(self, train: bool, world: int):
        from ffcv.loader import OrderOption

        if not train:
            return OrderOption.SEQUENTIAL
        order = self.order
        if order == "auto":
            order = "random" if world > 1 else "quasi_random"
        if order == "quasi_random" and world > 1:
            raise ConfigError("data.order=quasi_random is not supported by ffcv when distributed: use random")
        return {
            "random": OrderOption.RANDOM,
            "quasi_random": OrderOption.QUASI_RANDOM,
            "sequential": OrderOption.SEQUENTIAL,
        }[order]

    def _build(self, train: bool) -> FFCVBatches:
        from ffcv.fields.decoders import (
            CenterCropRGBImageDecoder,
            IntDecoder,
            RandomResizedCropRGBImageDecoder,
        )
        from ffcv.loader import Loader
        from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

        rank, world = self._rank_world()
        device = self._device()
        aug = self.augment
        if train:
            res = self.progressive(0) if self.progressive else self.img_size
            decoder = RandomResizedCropRGBImageDecoder(
                (res, res),
                scale=tuple(aug.get("scale", (0.08, 1.0))),
                ratio=tuple(aug.get("ratio", (3 / 4, 4 / 3))),
            )
            image_ops = [decoder]
            if aug.get("hflip", 0.5) > 0:
                image_ops.append(RandomHorizontalFlip(aug.get("hflip", 0.5)))
        else:
            decoder = CenterCropRGBImageDecoder((self.img_size, self.img_size), ratio=self.crop_pct)
            image_ops = [decoder]
        non_blocking = device.type == "cuda"
        image_ops += [ToTensor(), ToDevice(device, non_blocking=non_blocking), ToTorchImage()]
        # no Squeeze(): on a last batch of one it squeezes to 0-d and ToDevice fails; FFCVBatches flattens
        label_ops = [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=non_blocking)]
        repeats = self.repeated_aug if (train and world > 1) else 1
        loader = Loader(
            str(self.train_path if train else self.val_path),
            batch_size=self.batch_size if train else self.eval_batch_size,
            num_workers=self.num_workers,
            os_cache=self.os_cache,
            order=self._ffcv_order(train, world),
            distributed=world > 1 and repeats == 1,
            seed=self.seed,
            pipelines={"image": image_ops, "label": label_ops},
            drop_last=train,
            batches_ahead=self.batches_ahead,
        )
        if repeats > 1:
            # ffcv's Loader has no hook for a custom order object: swap it in and refresh its length
            loader.traversal_order = RepeatedAugmentationOrder(
                loader.indices, self.seed, rank, world, repeats
            )
            loader.first_traversal_order = loader.next_traversal_order()
        resume_epoch = 0
        if train and self.resume_position:
            # wrapped after ffcv computed its length from a whole epoch: len() stays one epoch, as Lightning
            # counts on from the checkpoint's batch
            loader.traversal_order = ResumableOrder(loader.traversal_order, self.batch_size, drop_last=True)
            self._resume_sampler(loader.traversal_order, world)
            resume_epoch = self.resume_position["epoch"]
        transform = BatchTransform(
            self.img_size,
            self.mean,
            self.std,
            train=train,
            three_augment=aug.get("three_augment", True),
            color_jitter=aug.get("color_jitter", 0.3),
            re_prob=aug.get("re_prob", 0.25),
            re_mode=aug.get("re_mode", "pixel"),
            re_count=aug.get("re_count", 1),
        )
        batches = FFCVBatches(
            loader,
            transform,
            decoder=decoder if train else None,
            resolution=self.progressive if train else None,
            name="train" if train else "val",
        )
        batches.set_epoch(resume_epoch)  # Lightning may iterate a resumed epoch before calling set_epoch
        return batches

    def train_dataloader(self) -> FFCVBatches:
        return self._build(train=True)

    def val_dataloader(self) -> FFCVBatches:
        return self._build(train=False)

    @property
    def num_train_samples(self) -> int:
        return int(self.meta.get("splits", {}).get("train", {}).get("samples", 0))
