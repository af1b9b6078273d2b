"""The ImageNet folder pipeline, the fixture generator, bad input, and the batch augmentation."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data.batch_augment import BatchTransform, ThreeAugment, gaussian_blur, grayscale
from data.fake_imagenet import write_fake_imagenet
from data.image_tree import load_rgb, scan_tree, verify_images
from data.imagenet_folder import FolderImages, ImageNetFolderDataModule
from mixerlab.errors import BadImageError, DatasetError

SMALL = dict(img_size=32, num_classes=4, batch_size=4)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    """4 classes x 6 train / 2 val JPEGs of 40-96 px, plus every bad-input case."""
    root = tmp_path_factory.mktemp("imagenet")
    return root, write_fake_imagenet(root, bad_files=True)


def undecodable(root: Path, manifest: dict) -> set[str]:
    """The manifest's bad files that carry an image extension (met only when decoded)."""
    return {str(root / p) for p in manifest["bad"] if p.endswith(".JPEG")}


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- fixture generator
def test_fixture_is_deterministic_with_varied_sizes_and_lists_its_bad_cases(tmp_path, tree):
    root, manifest = tree
    again = write_fake_imagenet(tmp_path / "again", bad_files=True)
    assert tree_digest(root) == tree_digest(tmp_path / "again") and again == {**manifest}
    sizes = {load_rgb(p).size for p in root.glob("train/*/*_train_*.JPEG")}
    assert len(sizes) > 10  # varied sizes and aspect ratios
    assert manifest["train"] == 4 * 6 + 3 and manifest["val"] == 4 * 2 + 1  # + decodable oddities
    assert sorted(manifest["bad"].values()) == sorted(
        [
            "truncated JPEG",
            "zero-byte file",
            "text file",
            "macOS metadata beside the class folders",
            "macOS metadata",
            "truncated JPEG",
        ]
    )


def test_make_fixture_script_writes_the_tree(tmp_path):
    from scripts.make_fixture_imagenet import main

    manifest = main(
        ["--out", str(tmp_path / "t"), "--classes", "3", "--train-per-class", "2", "--val-per-class", "1"]
    )
    assert len(list((tmp_path / "t" / "train").glob("*/*.JPEG"))) == 6 == manifest["train"]
    assert json.loads((tmp_path / "t" / "fixture.json").read_text())["classes"] == manifest["classes"]


# ---------------------------------------------------------------- labels and decoding
def test_labels_are_indices_of_sorted_class_folders(tree):
    root, manifest = tree
    splits = scan_tree(root, ("train", "val"), num_classes=4)
    assert splits["train"].classes == sorted(manifest["classes"]) == splits["val"].classes
    for path, label in splits["train"].samples + splits["val"].samples:
        assert Path(path).parent.name == manifest["classes"][label]


def test_png_named_jpeg_cmyk_and_grayscale_decode_to_rgb(tree):
    root, manifest = tree
    assert set(manifest["odd"].values()) == {"CMYK JPEG", "grayscale JPEG", "PNG named .JPEG"}
    for rel in manifest["odd"]:
        image = load_rgb(root / rel)
        assert image.mode == "RGB" and np.asarray(image).std() > 5


# ---------------------------------------------------------------- bad files
def test_skip_policy_names_each_bad_file_logs_it_and_fills_its_slot_with_a_labelled_neighbour(tree, tmp_path):
    root, manifest = tree
    samples = scan_tree(root, ("train", "val"), 4)["train"].samples
    log = tmp_path / "bad_files.txt"
    images = FolderImages(samples, bad_files="skip", log_path=str(log))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [images[i] for i in range(len(images))]
    bad = {str(root / p) for p in manifest["bad"] if p.startswith("train") and p.endswith(".JPEG")}
    assert set(images.skipped) == bad and len(bad) == 2
    assert all(any(path in str(w.message) for w in caught) for path in bad)
    assert {line.split("\t")[0] for line in log.read_text().splitlines()} == bad
    for i, (image, label) in enumerate(items):
        path, listed = samples[i]
        assert image.mode == "RGB"
        if path not in bad:
            assert label == listed
        else:  # replaced by the next listed file, with that file's own label
            assert label == samples[(i + 1) % len(samples)][1]


def test_fail_policy_raises_naming_the_undecodable_file(tree):
    root, manifest = tree
    samples = scan_tree(root, ("train", "val"), 4)["train"].samples
    images = FolderImages(samples, bad_files="fail")
    empty = next(i for i, (p, _) in enumerate(samples) if p.endswith("empty.JPEG"))
    with pytest.raises(BadImageError, match=r"empty\.JPEG: zero-byte file.*bad_files=skip"):
        images[empty]
    truncated = next(i for i, (p, _) in enumerate(samples) if p.endswith("truncated.JPEG"))
    with pytest.raises(BadImageError, match=r"truncated\.JPEG: truncated image"):
        images[truncated]


def test_stray_non_images_are_named_at_start_up(tree):
    root, _ = tree
    with pytest.raises(DatasetError, match=r"3 bad file\(s\)(.|\n)*train/\.DS_Store(.|\n)*notes\.txt"):
        ImageNetFolderDataModule(root=str(root), bad_files="fail", **SMALL)
    with pytest.warns(UserWarning, match=r"skipping 3 bad file\(s\)(.|\n)*notes\.txt"):
        ImageNetFolderDataModule(root=str(root), bad_files="skip", **SMALL)


def test_verify_finds_every_undecodable_file_and_reuses_its_verdict_until_a_file_changes(
    tree, tmp_path, monkeypatch
):
    root, manifest = tree
    splits = scan_tree(root, ("train", "val"), 4)
    paths = [p for p, _ in splits["train"].samples + splits["val"].samples]
    bad = verify_images(paths, num_workers=2, cache_dir=tmp_path)
    assert {b.path for b in bad} == undecodable(root, manifest) and len(bad) == 3
    import data.image_tree as image_tree

    def fail(path):
        raise AssertionError("a cached verdict should not decode anything")

    monkeypatch.setattr(image_tree, "check_image", fail)
    assert verify_images(paths, num_workers=0, cache_dir=tmp_path) == bad
    monkeypatch.undo()
    os.utime(paths[0], ns=(1, 1))  # "rewritten": the fingerprint changes, so the tree is verified again
    assert {b.path for b in verify_images(paths, num_workers=0, cache_dir=tmp_path)} == {b.path for b in bad}


def test_verify_option_drops_bad_files_before_training(tree):
    root, manifest = tree
    with pytest.warns(UserWarning):
        module = ImageNetFolderDataModule(root=str(root), verify=True, **SMALL)
        module.setup("fit")
    listed = {p for p, _ in module.train_set.source.samples + module.val_set.source.samples}
    assert not listed & undecodable(root, manifest)
    assert len(module.train_set) == manifest["train"] and len(module.val_set) == manifest["val"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("unset", r"data.root is not set: pass data.root=/path/to/imagenet"),
        ("missing", r"data.root=.*/nowhere does not exist"),
        ("empty", r"data.root=.*/empty is empty"),
        ("flat_val", r"/val has no class folders: .*holds 2 image files directly"),
        ("no_val", r"/val does not exist"),
        (
            "classes_differ",
            r"class folders differ between .*train \(2\) and .*val \(2\): only in train: "
            r"n10001111; only in val: n99999999",
        ),
        ("num_classes", r"data.num_classes=4 but .* has 2 class folders .*set data.num_classes=2"),
        ("no_images", r"/val has 2 class folders but no image files"),
    ],
)
def test_layout_errors_fail_at_start_up_naming_the_path_and_what_was_expected(tmp_path, case, message):
    root = tmp_path / "root"
    write_fake_imagenet(root, classes=2, train_per_class=1, val_per_class=1)
    val = root / "val"
    if case == "unset":
        root = None
    elif case == "missing":
        root = tmp_path / "nowhere"
    elif case == "empty":
        root = tmp_path / "empty"
        root.mkdir()
    elif case == "flat_val":
        for f in val.glob("*/*.JPEG"):
            f.rename(val / f.name)
        for d in val.iterdir():
            if d.is_dir():
                d.rmdir()
    elif case == "no_val":
        for f in val.glob("*/*"):
            f.unlink()
        for d in val.iterdir():
            d.rmdir()
        val.rmdir()
    elif case == "classes_differ":
        (val / "n10001111").rename(val / "n99999999")
    elif case == "no_images":
        for f in val.glob("*/*.JPEG"):
            f.unlink()
    num_classes = 4 if case == "num_classes" else 2
    with pytest.raises(DatasetError, match=message):
        ImageNetFolderDataModule(
            root=None if root is None else str(root), img_size=32, num_classes=num_classes, batch_size=2
        )


# ---------------------------------------------------------------- configs and end to end
def test_fake_imagenet_config_writes_its_tree_on_first_use(tmp_path):
    from hydra.utils import instantiate

    from mixerlab.build import compose_config

    cfg = compose_config(
        [
            "data=fake_imagenet",
            f"data.root={tmp_path / 'fake'}",
            "data.fixture.train_per_class=2",
            "data.fixture.val_per_class=1",
        ]
    )
    module = instantiate(cfg.data, _convert_="all")
    assert module.classes == sorted(module.classes) and len(module.classes) == cfg.data.num_classes == 4
    assert len(module.train_split) == 8 and (tmp_path / "fake" / "fixture.json").exists()


def test_imagenet_folder_config_carries_the_deit_augmentation():
    from mixerlab.build import compose_config

    cfg = compose_config(["data=imagenet_folder"])
    aug = cfg.data.augment
    assert (aug.auto_augment, aug.re_prob, aug.interpolation, list(aug.scale)) == (
        "rand-m9-mstd0.5-inc1",
        0.25,
        "bicubic",
        [0.08, 1.0],
    )
    assert (cfg.data.crop_pct, cfg.data.repeated_aug, cfg.data.img_size, cfg.data.num_classes) == (
        0.875,
        3,
        224,
        1000,
    )


def test_train_py_trains_on_a_folder_tree_with_bad_files_and_lists_them_in_the_run_dir(tree, train_run):
    root, manifest = tree
    proc, summary = train_run(
        "data=imagenet_folder",
        f"data.root={root}",
        "data.num_classes=4",
        "data.img_size=32",
        "data.batch_size=8",
        "data.num_workers=1",
        "recipe=digits",
        "trainer.max_epochs=2",
    )
    assert (
        summary["status"] == "completed" and summary["data"] == "imagenet_folder" and summary["epochs"] == 2
    )
    listed = {
        line.split("\t")[0] for line in (Path(summary["run_dir"]) / "bad_files.txt").read_text().splitlines()
    }
    assert listed == {str(root / p) for p in manifest["bad"]}


# ---------------------------------------------------------------- batch augmentation (the FFCV path's)
def test_gaussian_blur_keeps_flat_images_and_blurs_more_with_larger_sigma():
    flat = torch.full((2, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat, atol=1e-6)
    edge = torch.zeros(2, 1, 16, 16)
    edge[..., 8:] = 1.0
    out = gaussian_blur(edge, torch.tensor([0.3, 2.0]))
    assert out[0, 0, 0, 7] < 0.01 < out[1, 0, 0, 7] < 0.5  # the larger sigma spreads the edge further


def test_three_augment_applies_one_of_grayscale_solarize_blur_per_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    out = ThreeAugment(color_jitter=0.0)(x)
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    solarized = (out == torch.where(x >= 128 / 255, 1 - x, x)).flatten(1).all(1)
    blurred = ~gray & ~solarized
    assert gray.any() and solarized.any() and blurred.any()
    assert torch.allclose(
        grayscale(out[gray]), grayscale(x[gray]).to(out.dtype).expand(-1, 1, -1, -1), atol=1e-5
    )
    jittered = ThreeAugment(color_jitter=0.3)(x)
    assert 0.0 <= jittered.min() and jittered.max() <= 1.0


def test_batch_transform_resizes_progressive_batches_to_img_size_and_normalises():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    train = BatchTransform(32, (0.5,) * 3, (0.25,) * 3, train=True)
    assert train(images).shape == (4, 3, 32, 32)
    val = BatchTransform(16, (0.5,) * 3, (0.25,) * 3, train=False)
    assert torch.allclose(val(images), (images.float() / 255 - 0.5) / 0.25)


def test_randaugment_posterize_at_full_magnitude_gives_a_black_image_instead_of_crashing():
    """DeiT's rand-m9-mstd0.5-inc1 reaches magnitude 10 = keep 0 bits, which Pillow 13 rejects."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    import data.transforms  # noqa: F401  (installs the 0-bit-safe posterize)

    image = Image.new("RGB", (8, 8), (200, 100, 50))
    out = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(image)
    assert np.asarray(out).max() == 0
    assert np.asarray(AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5)(image)).max() > 0
