"""The FFCV path: beton writer, loader, agreement with the folder pipeline, bad input, progressive resizing.

Tests that need ffcv are marked ``ffcv`` and run in CI (the set-up installs the extra). ffcv compiles its
pipelines with numba on first use (seconds per loader), so these tests share one written tree.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.fake_imagenet import write_fake_imagenet
from data.image_tree import scan_tree
from data.imagenet_ffcv import ProgressiveResolution, RepeatedAugmentationOrder
from data.imagenet_folder import ImageNetFolderDataModule
from mixerlab.errors import ConfigError, DatasetError

SMALL = dict(num_classes=4, batch_size=4, num_workers=1)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    """(source tree, beton folder, fixture manifest, dataset.json): every image stored as JPEG q90."""
    from data.ffcv_writer import write_betons

    src = tmp_path_factory.mktemp("imagenet")
    manifest = write_fake_imagenet(src, bad_files=True)
    out = tmp_path_factory.mktemp("betons")
    record = write_betons(
        src, out, max_resolution=256, compress_probability=1.0, jpeg_quality=90, num_workers=2
    )
    return src, out, manifest, record


def ffcv_module(root: Path, **overrides):
    from data.imagenet_ffcv import ImageNetFFCVDataModule

    with pytest.warns(UserWarning, match="left out of the betons"):
        return ImageNetFFCVDataModule(root=str(root), **{"img_size": 28, **SMALL, **overrides})


# ---------------------------------------------------------------- pure Python (no ffcv needed)
def test_progressive_resolution_ramps_linearly_between_epochs_in_multiples():
    schedule = ProgressiveResolution(start_res=160, end_res=224, start_epoch=2, end_epoch=6, multiple=32)
    assert [schedule(e) for e in range(8)] == [
        160,
        160,
        160,
        192,
        192,
        192,
        224,
        224,
    ]  # np.round: half to even
    with pytest.raises(ConfigError, match="end_epoch >= start_epoch"):
        ProgressiveResolution(start_res=160, end_res=224, start_epoch=6, end_epoch=2)


def test_repeated_augmentation_order_deals_each_index_thrice_to_different_ranks():
    indices = np.arange(10, 22)
    orders = [
        RepeatedAugmentationOrder(indices, seed=0, rank=r, world_size=3, repeats=3).sample_order(5)
        for r in range(3)
    ]
    assert all(len(o) == 4 for o in orders)  # ceil(12 / 3) per rank, as without repeats
    for position in range(4):  # the three copies of a drawn index sit at the same position on the 3 ranks
        assert orders[0][position] == orders[1][position] == orders[2][position]
    again = RepeatedAugmentationOrder(indices, seed=0, rank=0, world_size=3, repeats=3).sample_order(5)
    other_epoch = RepeatedAugmentationOrder(indices, seed=0, rank=0, world_size=3, repeats=3).sample_order(6)
    assert list(again) == list(orders[0]) and list(other_epoch) != list(orders[0])


def test_missing_ffcv_fails_at_start_up_with_the_install_command(monkeypatch, tmp_path):
    from data.imagenet_ffcv import ImageNetFFCVDataModule

    monkeypatch.setitem(sys.modules, "ffcv", None)  # "import ffcv" now raises ImportError
    with pytest.raises(
        ConfigError,
        match=r"needs the ffcv extra(.|\n)*apt-get install -y pkg-config "
        r"libturbojpeg0-dev libopencv-dev && pip install 'ffcv==1.0.2'",
    ):
        ImageNetFFCVDataModule(root=str(tmp_path), img_size=32, **SMALL)


# ---------------------------------------------------------------- writer
@pytest.mark.ffcv
def test_writer_leaves_out_every_bad_file_and_lists_it_next_to_the_betons(written):
    src, out, manifest, record = written
    listed = dict(line.split("\t") for line in (out / "bad_files.txt").read_text().splitlines())
    assert set(listed) == {str(src / p) for p in manifest["bad"]}
    assert record["splits"]["train"]["samples"] == manifest["train"]
    assert record["splits"]["val"]["samples"] == manifest["val"]
    assert record["splits"]["train"]["bad_files"] + record["splits"]["val"]["bad_files"] == len(
        manifest["bad"]
    )
    assert json.loads((out / "dataset.json").read_text())["classes"] == sorted(manifest["classes"])
    assert {p.name for p in out.iterdir()} == {
        "train.beton",
        "val.beton",
        "train.files.txt",
        "val.files.txt",
        "dataset.json",
        "bad_files.txt",
    }


@pytest.mark.ffcv
def test_beton_labels_are_the_folder_pipelines_labels_file_by_file(written):
    from data.imagenet_ffcv import read_beton_labels

    src, out, _, _ = written
    folder = scan_tree(src, ("train", "val"), 4)
    for split in ("train", "val"):
        folder_labels = {p: label for p, label in folder[split].samples}
        rows = [line.split("\t") for line in (out / f"{split}.files.txt").read_text().splitlines()]
        beton = read_beton_labels(out / f"{split}.beton")
        assert len(beton) == len(rows)
        for (rel, label), written_label in zip(rows, beton, strict=True):
            assert folder_labels[str(src / split / rel)] == int(label) == written_label


@pytest.mark.ffcv
def test_writer_fails_before_writing_when_train_and_val_classes_differ(tmp_path):
    from data.ffcv_writer import write_betons

    write_fake_imagenet(tmp_path / "src", classes=2, train_per_class=1, val_per_class=1)
    (tmp_path / "src" / "val" / "n10001111").rename(tmp_path / "src" / "val" / "n12345678")
    with pytest.raises(DatasetError, match=r"class folders differ(.|\n)*only in val: n12345678"):
        write_betons(tmp_path / "src", tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- loader
@pytest.mark.ffcv
def test_centre_cropped_val_view_matches_the_folder_pipeline_within_jpeg_tolerance(written):
    """Same labels, and pixels within JPEG q90 + resampling tolerance, image by image.

    img_size 28 / crop_pct 0.875 = 32 exactly, so both crop the same centre square; what is left is the
    JPEG re-encoding, PIL bicubic vs ffcv's area resampling and torchvision's rounding of the resized
    long side (noticeable at 28 px on 40-96 px images, negligible at 224 on ImageNet's ~400 px images).
    """
    src, out, _, _ = written
    ffcv_data = ffcv_module(out, crop_pct=0.875)
    images, labels = [], []
    for x, y in ffcv_data.val_dataloader():
        assert x.shape[1:] == (3, 28, 28) and x.dtype == torch.float32
        images.append(x)
        labels.append(y)
    images, labels = torch.cat(images), torch.cat(labels)
    with pytest.warns(UserWarning):
        folder = ImageNetFolderDataModule(root=str(src), img_size=28, crop_pct=0.875, **SMALL)
    folder.setup("validate")
    index = {p: i for i, (p, _) in enumerate(folder.val_split.samples)}
    mean, std = torch.tensor(folder.mean).view(3, 1, 1), torch.tensor(folder.std).view(3, 1, 1)
    to_pixels = lambda t: t * std * 255 + mean * 255  # noqa: E731
    rows = [line.split("\t")[0] for line in (out / "val.files.txt").read_text().splitlines()]
    assert len(rows) == len(images)
    errors = []
    for i, rel in enumerate(rows):
        reference, label = folder.val_set[index[str(src / "val" / rel)]]
        assert label == labels[i].item()
        error = (to_pixels(images[i]) - to_pixels(reference)).abs().mean(dim=(0, 1, 2))
        nearest_other = min(
            (to_pixels(images[j]) - to_pixels(reference)).abs().mean() for j in range(len(images)) if j != i
        )
        assert error < nearest_other / 2  # unmistakably the same image: nothing shuffled or mislabelled
        errors.append(float(error))
    # 0..255 scale. Measured: mean 3.7; 1.1-3.9 on 7 images, 7.7 and 11.2 on the two portrait images with
    # horizontal bands, where torchvision's truncated long side (47.7 -> 47 px) shifts the bands ~0.8 px
    assert np.mean(errors) < 5.0 and max(errors) < 15.0, errors


@pytest.mark.ffcv
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_root", r"data.root=.*/nowhere does not exist"),
        ("missing_val", r"val.beton is missing or empty: expected an FFCV beton; write it with"),
        ("truncated", r"val.beton is not a readable image/label FFCV beton .*rewrite it"),
        ("num_classes", r"data.num_classes=10 but .*dataset.json lists 4 classes: set data.num_classes=4"),
        ("bad_files_fail", r"6 bad file\(s\) .*left out of the betons(.|\n)*empty\.JPEG"),
    ],
)
def test_bad_beton_folders_fail_at_start_up_naming_the_file(written, tmp_path, case, message):
    from data.imagenet_ffcv import ImageNetFFCVDataModule

    _, out, _, _ = written
    root = tmp_path / "betons"
    shutil.copytree(out, root)
    kwargs = {"img_size": 28, **SMALL}
    if case == "missing_root":
        root = tmp_path / "nowhere"
    elif case == "missing_val":
        (root / "val.beton").unlink()
    elif case == "truncated":
        data = (root / "val.beton").read_bytes()
        (root / "val.beton").write_bytes(data[: len(data) // 2])
    elif case == "num_classes":
        kwargs["num_classes"] = 10
    elif case == "bad_files_fail":
        kwargs["bad_files"] = "fail"
    with pytest.raises(DatasetError, match=message):
        ImageNetFFCVDataModule(root=str(root), **kwargs)


@pytest.mark.ffcv
def test_train_py_trains_on_betons_with_progressive_resizing(written, train_run):
    """End to end on the CPU; the decoder's resolution follows the epoch while the model always gets 32 px."""
    _, out, _, _ = written
    proc, summary = train_run(
        "data=imagenet_ffcv",
        f"data.root={out}",
        "data.num_classes=4",
        "data.img_size=32",
        "data.batch_size=8",
        "data.num_workers=1",
        "recipe=digits",
        "trainer.max_epochs=3",
        "+data.progressive={start_res:16,end_res:32,start_epoch:0,end_epoch:2,multiple:8}",
    )
    assert summary["status"] == "completed" and summary["data"] == "imagenet_ffcv" and summary["epochs"] == 3
    assert summary["steps"] == 3 * (27 // 8)  # drop_last: 27 training images, batches of 8
    for epoch, res in enumerate((16, 24, 32)):
        assert (
            f"ffcv train epoch {epoch}: decoding at {res} px, batches resized to 32 px"
            in proc.stdout + proc.stderr
        )


def test_resumed_order_continues_an_epoch_where_the_checkpoint_stopped():
    """Mid-epoch resume: the resumed pass is the uninterrupted pass minus the samples already trained on."""
    from types import SimpleNamespace

    from data.imagenet_ffcv import ResumableOrder

    full = np.arange(100, 127)  # 27 samples; batches of 8 with drop_last keep 24
    inner = SimpleNamespace(sample_order=lambda epoch: np.roll(full, epoch))
    order = ResumableOrder(inner, batch_size=8, drop_last=True)
    order.resume_at(epoch=2, position=16)
    assert list(order.sample_order(2)) == list(np.roll(full, 2)[16:24])  # the third batch, nothing more
    assert list(order.sample_order(3)) == list(np.roll(full, 3))  # later epochs whole


@pytest.mark.ffcv
def test_ffcv_train_loader_resumes_mid_epoch_and_keeps_a_whole_epochs_length(written):
    _, out, _, _ = written
    module = ffcv_module(out, batch_size=8)
    module.resume_position = {"epoch": 1, "batches": 2, "batch_size": 8, "world_size": 1}
    batches = module.train_dataloader()
    assert len(batches) == 27 // 8 and batches.epoch == 1
    order = batches.loader.traversal_order
    assert len(order.sample_order(1)) == 8 and len(order.sample_order(2)) == 27
    module.resume_position = {"epoch": 1, "batches": 2, "batch_size": 4, "world_size": 1}
    with pytest.raises(ConfigError, match="resume it with the same devices, nodes and data.batch_size"):
        module.train_dataloader()


@pytest.mark.parametrize("module", ["data.imagenet_folder:ImageNetFolderDataModule",
                                    "data.imagenet_ffcv:ImageNetFFCVDataModule"])
@pytest.mark.parametrize(
    "bad, message",
    [({"in_chans": 1}, r"data.in_chans=1: .* hold RGB images, set data.in_chans=3"),
     ({"bad_files": "ignore"}, r"data.bad_files='ignore' must be one of \['skip', 'fail'\]")],
)
def test_both_imagenet_pipelines_refuse_a_bad_key_before_reading_anything(tmp_path, module, bad, message):
    """The same checks in both pipelines, made before the (missing) root is looked at."""
    import importlib

    path, name = module.split(":")
    datamodule = getattr(importlib.import_module(path), name)
    with pytest.raises(ConfigError, match=message):
        datamodule(root=str(tmp_path / "nowhere"), img_size=28, num_classes=2, batch_size=2, **bad)
