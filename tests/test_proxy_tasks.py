"""The proxy tasks: deterministic generators, balanced labels, no leakage, the right answers, exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.datasets import ImageFolder

from data.digit_tasks import DIGIT, TASKS, DigitBank, DigitTasksDataModule, digit_banks, render, render_many
from data.folder_export import write_image_folder
from data.pathfinder import PathfinderDataModule, PathfinderSettings, cache_path, generate, load_or_generate
from data.sampling import EpochSampler
from mixerlab.errors import ConfigError


# ---------------------------------------------------------------- digit tasks
@pytest.mark.parametrize("task", sorted(TASKS))
def test_digit_task_same_seed_gives_same_bytes(task):
    bank, _ = digit_banks()
    first, label = render(task, bank, index=7, seed=1234)
    again, label_again = render(task, bank, index=7, seed=1234)
    other, _ = render(task, bank, index=7, seed=1235)
    assert first.tobytes() == again.tobytes() and label == label_again
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_digit_task_labels_are_exactly_balanced(task):
    _, val_bank = digit_banks()
    _, labels = render_many(task, val_bank, count=200, seed=0)
    counts = np.bincount(labels, minlength=TASKS[task].num_classes)
    assert (counts == 200 // TASKS[task].num_classes).all()


def test_train_and_val_samples_share_no_source_digit_image():
    train_bank, val_bank = digit_banks()
    train_images = {image.tobytes() for image in train_bank.images}
    val_images = {image.tobytes() for image in val_bank.images}
    assert len(train_images) == 1437 and len(val_images) == 360 and not train_images & val_images
    # every digit pasted on a validation canvas is a validation image (digits sit on the 4-px grid)
    canvases, _ = render_many("odd_one_out", val_bank, count=50, seed=3)
    for canvas in canvases:
        found = [
            canvas[y : y + DIGIT, x : x + DIGIT].tobytes() for y in range(0, 25, 4) for x in range(0, 25, 4)
        ]
        assert sum(window in val_images for window in found) == 3
        assert not any(window in train_images for window in found)


def constant_bank() -> DigitBank:
    """Digit c is a flat 8x8 square of value 10 * (c + 1), three copies each: the answer can be read off."""
    labels = np.repeat(np.arange(10), 3)
    images = np.repeat((10 * (labels + 1)).astype(np.uint8), DIGIT * DIGIT).reshape(-1, DIGIT, DIGIT)
    return DigitBank(images, labels)


def digits_on(canvas: np.ndarray) -> list[int]:
    """The classes pasted on a canvas drawn from :func:`constant_bank`, one entry per digit."""
    values, pixels = np.unique(canvas[canvas > 0], return_counts=True)
    return sorted(
        c for v, n in zip(values, pixels, strict=True) for c in [int(v) // 10 - 1] * (n // DIGIT**2)
    )


@pytest.mark.parametrize(
    ("task", "answer"),
    [
        ("odd_one_out", lambda d: next(c for c in d if d.count(c) == 1)),
        ("sum_mod10", lambda d: sum(d) % 10),
        ("same_different", lambda d: int(d[0] == d[1])),
    ],
)
def test_digit_task_label_is_the_answer(task, answer):
    bank = constant_bank()
    for index in range(40):
        canvas, label = render(task, bank, index, seed=index)
        digits = digits_on(canvas)
        assert len(digits) == (3 if task == "odd_one_out" else 2)
        assert label == answer(digits)


def test_marker_points_at_the_labelled_digit():
    bank = constant_bank()
    for index in range(40):
        canvas, label = render("marker", bank, index, seed=index)
        rows = np.flatnonzero(canvas[:, 0] == 255)  # the bar at the left edge
        assert len(rows) == DIGIT
        band = canvas[rows[0] : rows[0] + DIGIT, 2:]
        assert int(band.max()) // 10 - 1 == label


def test_training_samples_are_fresh_each_epoch_and_replayable():
    dm = DigitTasksDataModule(samples_per_epoch=64, val_samples=20, seed=5)
    dm.setup()
    sampler = EpochSampler(64, seed=5)
    epoch0 = dict(sampler.order())
    sampler.set_epoch(1)
    epoch1 = dict(sampler.order())
    image0, label0 = dm.train_set[(3, epoch0[3])]
    again, _ = dm.train_set[(3, epoch0[3])]
    image1, label1 = dm.train_set[(3, epoch1[3])]
    assert torch.equal(image0, again) and label0 == label1 == 3
    assert not torch.equal(image0, image1)
    assert image0.shape == (1, 32, 32) and image0.dtype == torch.float32


def test_samples_are_the_canvas_normalised_by_mean_and_std():
    dm = DigitTasksDataModule(samples_per_epoch=8, val_samples=10, mean=(0.06,), std=(0.2,))
    dm.setup()
    canvas, label = render("odd_one_out", digit_banks()[0], index=2, seed=99)
    image, got_label = dm.train_set[(2, 99)]
    expected = (torch.from_numpy(canvas).float() / 255 - 0.06) / 0.2
    assert got_label == label
    assert torch.allclose(image[0], expected, atol=1e-6)


def test_validation_set_is_fixed_across_run_seeds():
    first = DigitTasksDataModule(val_samples=30, seed=0)
    second = DigitTasksDataModule(val_samples=30, seed=1)
    first.setup()
    second.setup()
    assert torch.equal(
        torch.stack([first.val_set[i][0] for i in range(30)]),
        torch.stack([second.val_set[i][0] for i in range(30)]),
    )


def test_bad_digit_task_config_names_the_key():
    with pytest.raises(ConfigError, match=r"data.task='parity'"):
        DigitTasksDataModule(task="parity")
    with pytest.raises(ConfigError, match=r"data.num_classes=10 .* set data.num_classes=2"):
        DigitTasksDataModule(task="same_different", num_classes=10)
    with pytest.raises(ConfigError, match=r"data.img_size=16"):
        DigitTasksDataModule(img_size=16)


# ---------------------------------------------------------------- pathfinder
SMALL = PathfinderSettings(train_samples=60, val_samples=20, path_length=12, num_distractors=1)


def test_pathfinder_same_settings_give_same_bytes():
    first, labels = generate(SMALL, "train")
    again, labels_again = generate(SMALL, "train")
    assert first.tobytes() == again.tobytes() and np.array_equal(labels, labels_again)
    other, _ = generate(PathfinderSettings(**{**SMALL.__dict__, "dataset_seed": 1}), "train")
    assert first.tobytes() != other.tobytes()
    val, _ = generate(SMALL, "val")
    assert not any(image.tobytes() == v.tobytes() for image in first for v in val)


def test_pathfinder_labels_are_exactly_balanced():
    _, labels = generate(SMALL, "train")
    assert np.bincount(labels).tolist() == [30, 30]


@pytest.mark.parametrize("size", [32, 64])
def test_pathfinder_label_says_whether_one_path_joins_the_markers(size):
    # solid paths (gap 0): the markers are connected exactly when they share an 8-connected component
    settings = PathfinderSettings(
        img_size=size, path_length=size // 2, num_distractors=2, gap=0, train_samples=40, val_samples=2
    )
    images, labels = generate(settings, "train")
    for image, label in zip(images, labels, strict=True):
        on = image > 0
        centres = np.argwhere(ndimage.binary_erosion(on, structure=np.ones((3, 3))))
        assert len(centres) == 2, "exactly two 3x3 markers"
        components, _ = ndimage.label(on, structure=np.ones((3, 3)))
        assert (components[tuple(centres[0])] == components[tuple(centres[1])]) == bool(label)


def test_pathfinder_marker_distance_does_not_give_the_label_away():
    settings = PathfinderSettings(train_samples=200, val_samples=2, gap=0)
    images, labels = generate(settings, "train")
    distances = np.array(
        [
            np.linalg.norm(
                np.subtract(*np.argwhere(ndimage.binary_erosion(image > 0, structure=np.ones((3, 3)))))
            )
            for image in images
        ]
    )
    connected, apart = distances[labels == 1], distances[labels == 0]
    assert abs(connected.mean() - apart.mean()) < 1.0
    assert abs(np.median(connected) - np.median(apart)) < 1.0


def test_pathfinder_is_cached_once_per_setting(tmp_path, monkeypatch):
    arrays = load_or_generate(SMALL, tmp_path)
    path = cache_path(SMALL, tmp_path)
    assert path.is_file() and list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    monkeypatch.setattr("data.pathfinder.generate", lambda *a: pytest.fail("regenerated a cached setting"))
    cached = load_or_generate(SMALL, tmp_path)
    assert all(np.array_equal(arrays[k], cached[k]) for k in arrays)
    assert cache_path(PathfinderSettings(**{**SMALL.__dict__, "num_distractors": 2}), tmp_path) != path


def test_pathfinder_datamodule_serves_normalised_tensors(tmp_path):
    dm = PathfinderDataModule(train_samples=40, val_samples=10, cache_dir=str(tmp_path), batch_size=8)
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 32, 32) and set(labels.tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match="data.path_length=40"):
        PathfinderDataModule(path_length=40)
    with pytest.raises(ConfigError, match="does not fit"):
        PathfinderDataModule(path_length=30, num_distractors=6)


# ---------------------------------------------------------------- export
def test_folder_export_reads_back_with_the_same_pixels_and_labels(tmp_path):
    dm = DigitTasksDataModule(task="same_different", num_classes=2, samples_per_epoch=12, val_samples=6)
    splits = {"train": dm.split_arrays("train"), "val": dm.split_arrays("val")}
    root = write_image_folder(
        tmp_path / "same_different", splits, dm.class_names, info={"task": "same_different"}
    )
    for split, (images, labels) in splits.items():
        folder = ImageFolder(root / split)
        assert folder.classes == ["different", "same"]
        read = sorted((path.rsplit("/", 1)[-1], label) for path, label in folder.samples)
        assert [label for _, label in read] == labels.tolist()
        for (name, _), image in zip(read, images, strict=True):
            assert np.array_equal(
                np.asarray(folder.loader(str(root / split / folder.classes[_] / name)).convert("L")), image
            )
    assert json.loads((root / "export.json").read_text())["counts"]["val"] == {"different": 3, "same": 3}
    with pytest.raises(FileExistsError):
        write_image_folder(root, splits, dm.class_names)


def test_export_of_training_epochs_matches_what_training_draws():
    dm = DigitTasksDataModule(samples_per_epoch=16, val_samples=4, seed=2)
    dm.setup()
    images, labels = dm.split_arrays("train", epochs=2)
    assert images.shape == (32, 32, 32)
    sampler = EpochSampler(16, seed=2)
    sampler.set_epoch(1)
    index, seed = sorted(sampler.order())[5]
    tensor, label = dm.train_set[(index, seed)]
    assert label == labels[16 + 5]
    assert torch.allclose(tensor[0], (torch.from_numpy(images[16 + 5]).float() / 255 - 0.06) / 0.2, atol=1e-6)


# ---------------------------------------------------------------- the point of it all
@pytest.mark.slow
def test_attention_beats_identity_on_odd_one_out_after_a_short_run(train_run):
    # A depth-2 model and 16,000 fresh samples (~15 s per run on 2 idle cores). Measured here: attention
    # 27.8%, identity 15.8% (chance 10%; a model that mixes no tokens cannot tell which digit is the odd
    # one). mixer=identity is the zoo's.
    short = [
        "experiment=proxy_odd_one_out",
        "backbone.depth=2",
        "data.samples_per_epoch=8000",
        "data.val_samples=500",
        "trainer.max_epochs=2",
        "recipe.warmup_epochs=0.2",
        "recipe.decay=cosine",  # the schedule the figures above were measured with
        "recipe.lr=2e-3",
        "callbacks.progress.refresh_rate=0",
    ]
    _, attention = train_run(*short, "mixer=attention")
    _, identity = train_run(*short, "mixer=identity")
    assert attention["status"] == identity["status"] == "completed"
    assert identity["top1"] < 20
    assert attention["top1"] > identity["top1"] + 6


# ---------------------------------------------------------------- presets (RESULTS.md's budgets)
PROXY_PRESETS = {  # preset -> (data task or pathfinder, classes, epochs, warm-up epochs, decay after it):
    # the budgets and schedules RESULTS.md measured (odd one out holds the rate: its section says why)
    "proxy_odd_one_out": ("odd_one_out", 10, 6, 0, "constant"),
    "proxy_sum_mod10": ("sum_mod10", 10, 12, 1, "cosine"),
    "proxy_same_different": ("same_different", 2, 6, 1, "cosine"),
    "proxy_marker": ("marker", 10, 6, 1, "cosine"),
    "proxy_pathfinder": ("pathfinder", 2, 4, 0.3, "cosine"),
}


def test_every_proxy_preset_is_pinned_below():
    from mixerlab.build import CONF_DIR

    assert sorted(p.stem for p in (CONF_DIR / "experiment").glob("proxy_*.yaml")) == sorted(
        [*PROXY_PRESETS, "proxy_base"]
    )


@pytest.mark.parametrize("preset", sorted(PROXY_PRESETS))
def test_proxy_presets_sweep_five_mixers_at_the_measured_budget(preset):
    from mixerlab.build import compose_config

    task, classes, epochs, warmup, decay = PROXY_PRESETS[preset]
    cfg = compose_config([f"experiment={preset}"])
    assert cfg.hydra.sweeper.params.mixer.split(",") == ["identity", "pooling", "attention", "feedforward",
                                                          "spectral"]
    assert cfg.data.get("task", "pathfinder") == task and cfg.data.num_classes == classes
    assert cfg.trainer.max_epochs == epochs
    assert (cfg.backbone.patch_size, cfg.backbone.embed_dim, cfg.backbone.depth, cfg.backbone.head) == (
        4, 64, 4, "gap")
    assert (cfg.recipe.warmup_epochs, cfg.recipe.decay) == (warmup, decay)
    if task == "pathfinder":  # the size at which the global filter and pooling learn it (RESULTS.md)
        assert (cfg.data.path_length, cfg.data.gap, cfg.data.num_distractors, cfg.data.train_samples) == (
            10, 0, 0, 50_000)
