"""eval.py: a run evaluated without training on clean, shifted (fixture folders) and -C sets; eval.json,
EMA weights, class checks, mCE, exactly-once counting on 2 processes, receptive fields and the report."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.corruptions import ALEXNET_ERROR, IMAGENET_C, corrupt
from data.digits_c import DIGITS_C, corrupt_digits
from data.fake_imagenet import class_image, jpeg_bytes, wnid
from data.shifted import (
    ClassFolderSet,
    EvalSet,
    IndexFolderSet,
    RealLabelSet,
    SubsetFolderSet,
    subset_indices,
    timm_info,
)
from mixerlab.errors import ConfigError, DatasetError
from mixerlab.evaluation import TopKCounts, corruption_summary, register_eval_resolvers
from tests.conftest import REPO, run_train

QUIET = ("~callbacks.progress", "+trainer.enable_progress_bar=false")
ENV = {"OMP_NUM_THREADS": "1"}


def run_eval(*overrides: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "eval.py"), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ENV, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def evaluate_in_process(*overrides: str) -> dict:
    """conf/eval.yaml composed with ``overrides`` and evaluated in this process (no interpreter start-up)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from mixerlab.evaluation import evaluate

    register_eval_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return evaluate(cfg)


def eval_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """The default digits run, 2 blocks, 12 steps, with an EMA (decay 0.5: far from the raw weights)."""
    run_dir = tmp_path_factory.mktemp("digits") / "run"
    run_train(run_dir, "trainer.max_epochs=1", "+trainer.limit_train_batches=12", "backbone.depth=2",
              "recipe.ema_decay=0.5", *QUIET, env=ENV)
    return run_dir


def write_images(folder: Path, count: int, label: int, size: int = 36, prefix: str = "img") -> None:
    rng = np.random.default_rng(label)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{prefix}_{i}.JPEG").write_bytes(jpeg_bytes(class_image(rng, label, 1000, (size, size))))


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1000-class run on a fake ImageNet tree (32 px, one image per class), 2 steps; the fixtures root."""
    root = tmp_path_factory.mktemp("imagenet")
    run_dir = root / "run"
    run_train(run_dir, "data=fake_imagenet", f"data.root={root / 'tree'}", "data.num_classes=1000",
              "data.img_size=32", "data.fixture.train_per_class=1", "data.fixture.val_per_class=1",
              "data.fixture.min_size=32", "data.fixture.max_size=36", "trainer.max_steps=2",
              "+trainer.limit_val_batches=1", "backbone.depth=2", *QUIET, env=ENV)
    return run_dir, root


# ---------------------------------------------------------------------------------------------- clean + EMA
def test_eval_of_a_run_writes_clean_with_the_ema_weights_and_counts_every_image(digits_run):
    summary = json.loads((digits_run / "summary.json").read_text())
    proc = run_eval(f"run={digits_run}")
    record = eval_json(digits_run)
    clean = record["sets"]["clean"]
    assert record["weights"] == "ema" and clean["images"] == 360 and clean["data"] == "digits"
    assert clean["top1"] == pytest.approx(summary["top1_ema"], abs=0.01)  # the run's own EMA figure
    assert "eval clean" in proc.stdout

    evaluate_in_process(f"run={digits_run / 'checkpoints' / 'last.ckpt'}", "weights=raw", "set_name=raw")
    raw = eval_json(digits_run)["sets"]["raw"]
    assert raw["top1"] == pytest.approx(summary["top1"], abs=0.01)  # the run's own figure, raw weights
    assert (raw["top1"], raw["top5"]) != (clean["top1"], clean["top5"])
    assert eval_json(digits_run)["sets"]["clean"] == clean  # merged, not replaced


def test_a_multirun_merges_every_set_into_one_eval_json_and_writes_nothing_elsewhere(digits_run):
    before = set(os.listdir(REPO))
    run_eval("-m", f"run={digits_run}", "limit=20", "set_name=first20_a,first20_b")
    sets = eval_json(digits_run)["sets"]
    assert sets["first20_a"]["images"] == sets["first20_b"]["images"] == 20
    assert (digits_run / ".eval" / "multirun.yaml").is_file()
    assert set(os.listdir(REPO)) == before


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    proc = run_eval(f"run={tmp_path}", check=False)
    assert proc.returncode != 0 and "has no config.yaml" in proc.stderr


# ---------------------------------------------------------------------------------------------- digits-C
def test_digits_c_writes_corruption_errors_and_receptive_fields(digits_run, tmp_path):
    evaluated = eval_json(digits_run)["sets"] if (digits_run / "eval.json").is_file() else {}
    if "clean" not in evaluated:  # the relative mCE needs the clean set first (earlier tests may have run it)
        run_eval(f"run={digits_run}")
    run_eval(f"run={digits_run}", "data=digits_c", "data.corruptions=[gaussian_noise,contrast]",
             "data.severities=[1,5]", "erf.layers=[0,-1]", "erf.images=16",
             env={"MIXERLAB_CACHE": str(tmp_path)})
    record = eval_json(digits_run)
    c = record["sets"]["digits_c"]
    assert c["images"] == 4 * 360 and set(c["corruptions"]) == {"gaussian_noise", "contrast"}
    assert set(c["corruptions"]["contrast"]) == {"1", "5"}
    assert c["normalisation"] == "clean" and "mce" not in c
    errors = [100 - np.mean(list(v.values())) for v in c["corruptions"].values()]
    assert c["mce_unnormalised"] == pytest.approx(np.mean(errors), abs=1e-2)
    clean_error = 100 - record["sets"]["clean"]["top1"]
    assert c["mce_relative"] == pytest.approx(c["mce_unnormalised"] - clean_error, abs=1e-2)
    assert len(list((tmp_path / "digits_c").glob("*.npz"))) == 1  # computed once, cached
    erf = json.loads((digits_run / "erf" / "erf.json").read_text())
    assert erf["layers"] == [0, 1] and erf["images"] == 16
    for layer in (0, 1):
        png = Image.open(digits_run / "erf" / f"layer{layer}.png")
        assert png.size[0] > 50


def test_the_shipped_digits_c_config_is_14_corruptions_by_5_severities_and_each_applies():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "data" / "digits_c.yaml")
    assert list(cfg.corruptions) == list(DIGITS_C) and len(DIGITS_C) == 14 and "frost" not in DIGITS_C
    assert list(cfg.severities) == [1, 2, 3, 4, 5]
    from data.digits import digit_images

    digits = digit_images()[0][:2]
    clean = np.stack([np.asarray(Image.fromarray(d).resize((32, 32), Image.BICUBIC)) for d in digits])
    for name in DIGITS_C:
        out = corrupt_digits(digits, name, 5, seed=0)
        assert out.shape == (2, 32, 32) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - clean).mean() > 1.0, name  # it changes the digit
        np.testing.assert_array_equal(out, corrupt_digits(digits, name, 5, seed=0))  # deterministic


def test_corruptions_are_deterministic_and_leave_the_callers_random_state_alone():
    image = np.asarray(class_image(np.random.default_rng(0), 1, 4, (40, 40)))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = corrupt(image, "gaussian_noise", 3, seed=7)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.testing.assert_array_equal(a, corrupt(image, "gaussian_noise", 3, seed=7))
    assert not np.array_equal(a, corrupt(image, "gaussian_noise", 3, seed=8))
    np.testing.assert_array_equal(corrupt(image, "glass_blur", 1, 5), corrupt(image, "glass_blur", 1, 5))


def test_mce_is_normalised_by_alexnet_and_the_constants_are_the_published_ones():
    assert list(ALEXNET_ERROR) == list(IMAGENET_C) and len(IMAGENET_C) == 15
    assert ALEXNET_ERROR["gaussian_noise"] == 0.886428 and ALEXNET_ERROR["jpeg_compression"] == 0.6065
    # AlexNet's own errors give mCE 100; half its error gives 50
    results = {(c, s): {"top1": 100 - 100 * ALEXNET_ERROR[c], "images": 10}
               for c in IMAGENET_C for s in (1, 2)}
    assert corruption_summary(results, None, "alexnet")["mce"] == pytest.approx(100.0, abs=1e-3)
    results = {k: {"top1": 100 - 50 * ALEXNET_ERROR[k[0]], "images": 10} for k in results}
    assert corruption_summary(results, None, "alexnet")["mce"] == pytest.approx(50.0, abs=1e-3)


def test_an_unknown_corruption_fails_naming_the_key(digits_run):
    proc = run_eval(f"run={digits_run}", "data=digits_c", "data.corruptions=[rain]", check=False)
    assert proc.returncode != 0 and "data.corruptions=['rain']" in proc.stderr


# ---------------------------------------------------------------------------------------------- shifted sets
def test_shifted_sets_on_fixture_folders(imagenet_run):
    """V2 layout, A/R layout (200 classes, 200 logits), Sketch, ReaL and -C on the fly, one eval.json."""
    run_dir, root = imagenet_run
    classes = f"data.classes={root / 'tree' / 'train'}"  # the fake tree's 1000 wnids, in label order
    for i in range(1000):
        write_images(root / "v2" / str(i), 1 if i < 7 else 0, i)
        write_images(root / "sketch" / wnid(i), 1 if i % 100 == 0 else 0, i)
    a_indices = subset_indices("a")
    for n, i in enumerate(a_indices):
        write_images(root / "a" / wnid(i), 1 if n < 5 else 0, i)
    labels = [[1], [2, 3], [], [4], [5], [0]]
    (root / "real").mkdir()
    for n in range(len(labels)):
        (root / "real" / f"ILSVRC2012_val_{n + 1:08d}.JPEG").write_bytes(
            jpeg_bytes(class_image(np.random.default_rng(n), n, 1000, (36, 36))))
    (root / "real.json").write_text(json.dumps(labels))

    run = f"run={run_dir}"
    evaluate_in_process(run, "data=imagenet_v2", f"data.root={root / 'v2'}", "data.num_workers=0", classes)
    evaluate_in_process(run, "data=imagenet_a", f"data.root={root / 'a'}", "data.num_workers=0", classes)
    evaluate_in_process(run, "data=imagenet_sketch", f"data.root={root / 'sketch'}", "data.num_workers=0",
                        classes)
    evaluate_in_process(run, "data=imagenet_real", f"data.root={root / 'real'}", "data.num_workers=0",
                        f"data.real_labels={root / 'real.json'}", classes)
    evaluate_in_process(run, "data=imagenet_c", f"data.root={root / 'tree'}", "data.num_workers=0",
                        "data.corruptions=[gaussian_noise,pixelate]", "data.severities=[2]", classes)
    sets = eval_json(run_dir)["sets"]
    assert sets["imagenet_v2"]["images"] == 7
    assert sets["imagenet_a"]["images"] == 5
    assert sets["imagenet_sketch"]["images"] == 10
    assert sets["imagenet_real"]["images"] == 5  # the image without a ReaL label is left out
    c = sets["imagenet_c"]
    assert c["images"] == 2 * 1000 and c["normalisation"] == "alexnet"
    errors = {k: 100 - v["2"] for k, v in c["corruptions"].items()}
    expected = np.mean([errors[k] / ALEXNET_ERROR[k] for k in errors])
    assert c["mce"] == pytest.approx(expected, abs=1e-2)


def test_subset_sets_score_only_their_200_logits():
    """The model prefers class 0 (not in ImageNet-A); among A's classes it prefers the target."""
    from mixerlab.evaluation import score

    a = subset_indices("a")
    assert 0 not in a and len(a) == 200
    logits = torch.zeros(1000)
    logits[0], logits[a[3]] = 10.0, 5.0

    class Constant(torch.nn.Module):
        def forward(self, x):
            return logits.expand(x.shape[0], -1)

    dataset = [(torch.zeros(3, 4, 4), a[3])] * 3
    import lightning as L

    fabric = L.Fabric(accelerator="cpu", devices=1)
    full = score(fabric, Constant(), EvalSet("full", dataset), 2, 0)
    subset = score(fabric, Constant(), EvalSet("a", dataset, class_subset=a), 2, 0)
    assert (full["top1"], subset["top1"], subset["images"]) == (0.0, 100.0, 3)


def test_timm_index_files_pick_the_subsets_own_wnids():
    synsets = timm_info("imagenet_synsets.txt").split()
    for subset in ("a", "r"):
        theirs = timm_info(f"imagenet_{subset}_synsets.txt").split()
        assert [synsets[i] for i in subset_indices(subset)] == theirs


def test_real_labels_are_timms_file_by_default():
    labels = json.loads(timm_info("imagenet_real_labels.json"))
    assert len(labels) == 50_000 and sum(1 for x in labels if not x) > 0


def test_counts_with_label_sets():
    counts = TopKCounts()
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    targets = torch.tensor([[False, True, True], [False, True, False]])
    counts.update(logits, targets, multi_label=True)
    assert counts.compute() == {"top1": 50.0, "top5": 100.0, "images": 2}


def test_folders_whose_classes_do_not_match_are_refused_naming_folder_and_mismatch(tmp_path):
    for i in [*range(999), "extra"]:
        write_images(tmp_path / "v2" / str(i), 1 if i == 0 else 0, 0)
    with pytest.raises(DatasetError, match=r"v2 is not an ImageNetV2.*missing: 999.*unexpected: extra"):
        IndexFolderSet(str(tmp_path / "v2"), img_size=32)
    synsets = timm_info("imagenet_synsets.txt").split()
    for name in synsets[:3]:
        write_images(tmp_path / "sketch" / name, 1, 0)
    with pytest.raises(DatasetError, match=r"sketch is not .*found 3; missing: .*997 in all"):
        ClassFolderSet(str(tmp_path / "sketch"), img_size=32)
    a = [synsets[i] for i in subset_indices("a")]
    for name in a[:199] + [synsets[0]]:
        write_images(tmp_path / "a" / name, 1, 0)
    with pytest.raises(DatasetError, match=rf"ImageNet-A.*missing: {a[199]}; unexpected: {synsets[0]}"):
        SubsetFolderSet(str(tmp_path / "a"), subset="a", img_size=32)
    with pytest.raises(ConfigError, match="200 of ImageNet-1k's 1000 classes; this model has 10"):
        SubsetFolderSet(str(tmp_path / "a"), subset="r", img_size=32, num_classes=10, classes=a[:10])
    write_images(tmp_path / "real", 1, 0, prefix="holiday")
    with pytest.raises(DatasetError, match="holds no ILSVRC2012_val_<n> images"):
        RealLabelSet(str(tmp_path / "real"), img_size=32)


# ------------------------------------------------------------------------------------------- receptive fields
def test_receptive_field_of_pooling_is_local_and_of_attention_global():
    """Block 0, 4x4 grid of 4-px patches: pooling's centre token (patch (2, 2)) sees only its 3x3 patch
    neighbourhood (rows and columns 4..15 of the image); attention's sees every pixel. CLS head too."""
    from mixerlab.erf import centre_token, effective_receptive_fields
    from mixers.metaformer import Pooling
    from tests.conftest import tiny_vit

    torch.manual_seed(0)
    images = torch.randn(3, 1, 16, 16)
    pooling = tiny_vit(lambda **kw: Pooling(pool_size=3, **kw), head="gap").eval()
    heat = effective_receptive_fields(pooling, images, [0])[0]
    assert heat.shape == (16, 16)
    assert heat[4:16, 4:16].min() > 0 and heat[:4].max() == 0 and heat[:, :4].max() == 0
    attention = tiny_vit(head="cls").eval()
    assert centre_token(attention) == 1 + 2 * 4 + 2
    maps = effective_receptive_fields(attention, images, [0, -1])
    assert sorted(maps) == [0, 1] and all(m.min() > 0 for m in maps.values())
    # a CLS token that joins at block 1: block 0 has 16 tokens, block 1 has 17
    late_cls = tiny_vit(head="cls", cls_from_layer=1, pos_embed="learned_patches").eval()
    assert centre_token(late_cls, 16) == 10 and centre_token(late_cls, 17) == 11
    assert effective_receptive_fields(late_cls, images, [0, 1])[0].min() > 0
    with pytest.raises(ConfigError, match="erf.layers"):
        effective_receptive_fields(attention, images, [5])


# ---------------------------------------------------------------------------------------------- 2 processes
def test_two_processes_count_every_image_exactly_once(digits_run):
    """77 images (odd) on 2 processes: a padding sampler would count 78; the figures equal one process's."""
    single = evaluate_in_process(f"run={digits_run}", "limit=77", "set_name=first77", "batch_size=8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "eval.py"), f"run={digits_run}", "limit=77", "set_name=first77_ddp", "batch_size=8",
           "num_workers=0"]
    env = {**os.environ, **ENV}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    sets = eval_json(digits_run)["sets"]
    assert sets["first77_ddp"]["world_size"] == 2
    assert sets["first77_ddp"]["images"] == 77 == sets["first77"]["images"]
    assert sets["first77_ddp"]["top1"] == single["sets"]["first77"]["top1"]
    assert sets["first77_ddp"]["top5"] == single["sets"]["first77"]["top5"]


# ---------------------------------------------------------------------------------------------- the report
def test_report_shows_robustness_table_plot_and_receptive_fields(tmp_path):
    from mixerlab.report import SweepReport
    from tests.report_data import make_sweep

    sweep = make_sweep(tmp_path)
    png = tmp_path / "erf.png"
    Image.new("RGB", (20, 20), (200, 40, 40)).save(png)
    evaluated = (("mixer=attention,seed=0", 91.0, 60.0), ("mixer=attention,seed=1", 93.0, 64.0),
                 ("mixer=pooling,seed=0", 92.5, 50.0))
    for job, clean, shifted in evaluated:
        run = sweep / job
        (run / "eval.json").write_text(json.dumps({"sets": {
            "clean": {"top1": clean}, "digits_c": {"top1": shifted, "mce_unnormalised": 100 - shifted}}}))
        (run / "erf").mkdir()
        (run / "erf" / "layer0.png").write_bytes(png.read_bytes())
        (run / "erf" / "erf.json").write_text(json.dumps({"layers": [0], "files": {"0": "layer0.png"},
                                                          "centre_patch_share": {"0": 0.5}}))
    html_path, md_path = SweepReport([sweep]).write()
    page = html_path.read_text()
    assert 'id="robustness"' in page and "62.00 ± 2.83 (n=2)" in page and "digits_c mean CE %" in page
    assert 'id="clean_vs_shifted"' in page
    assert page.count('class="erf-row"') == 2 and "data:image/png;base64," in page
    md = md_path.read_text()
    assert "## Robustness" in md and "| mixer=attention | 92.00 ± 1.41 (n=2) | 62.00 ± 2.83 (n=2)" in md
    assert "## Effective receptive fields" in md


# ---------------------------------------------------------------------------------------------- weights file
@pytest.fixture(scope="module")
def timm_file(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """A timm DeiT-Ti file (random init, its matrices x8 so that predictions follow the pixels rather than
    the init's near-constant logits) and an ImageNetV2-layout folder of 12 images of assorted sizes: the
    even ones filed under the class timm's own pipeline predicts for them, the odd ones under another."""
    import timm
    from timm.data import create_transform, resolve_data_config

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(8)
    torch.save(model.state_dict(), root / "deit_tiny.pth")
    transform = create_transform(**resolve_data_config({}, model=model))
    rng = np.random.default_rng(0)
    files = [jpeg_bytes(class_image(rng, k, 1000, tuple(int(s) for s in rng.integers(60, 320, 2))))
             for k in range(12)]
    with torch.no_grad():
        preds = model(torch.stack([transform(Image.open(io.BytesIO(f)).convert("RGB")) for f in files]))
    for i in range(1000):
        (root / "v2" / str(i)).mkdir(parents=True)
    for k, (data, pred) in enumerate(zip(files, preds.argmax(-1).tolist(), strict=True)):
        (root / "v2" / str(pred if k % 2 == 0 else (pred + 1) % 1000) / f"img_{k}.jpeg").write_bytes(data)
    return root / "deit_tiny.pth", root / "v2", model


def timm_predictions(model: torch.nn.Module, folder: Path) -> dict[str, tuple[int, list[int]]]:
    """timm's own evaluation: resolve_data_config + create_transform, eval mode; file -> (label, top-5)."""
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))
    out = {}
    with torch.no_grad():
        for path in sorted(folder.glob("*/*.jpeg")):
            logits = model(transform(Image.open(path).convert("RGB"))[None])
            out[str(path)] = (int(path.parent.name), logits.topk(5, dim=-1).indices[0].tolist())
    return out


def predictions_of(out_dir: Path, name: str = "imagenet_v2") -> dict[str, tuple[int, list[int]]]:
    rows = json.loads((out_dir / "predictions" / f"{name}.json").read_text())
    return {row["file"]: (row["target"], row["top5"]) for row in rows}


def test_a_timm_file_is_evaluated_without_a_run_and_matches_timms_pipeline_image_for_image(timm_file,
                                                                                          tmp_path):
    """eval.py experiment=deit_tiny init.checkpoint=FILE data=imagenet_v2: the same per-image top-5 and
    top-1 as timm's pipeline, because a timm file is read with timm's data config (crop 0.9, not the DeiT
    recipe's 0.875); with the data config's crop instead, some image's predictions differ."""
    path, folder, model = timm_file
    proc = run_eval("experiment=deit_tiny", f"init.checkpoint={path}", "data=imagenet_v2",
                    f"data.root={folder}", "data.num_workers=0", "predictions=true",
                    f"out={tmp_path / 'timm'}")
    record = eval_json(tmp_path / "timm")
    entry = record["sets"]["imagenet_v2"]
    reference = timm_predictions(model, folder)
    assert predictions_of(tmp_path / "timm") == reference
    top1 = 100.0 * sum(label == top[0] for label, top in reference.values()) / len(reference)
    assert entry["top1"] == pytest.approx(top1, abs=1e-3) and 0 < top1 < 100 and entry["images"] == 12
    assert entry["transform"]["from"] == "timm deit_tiny_patch16_224"
    assert entry["transform"]["crop_pct"] == 0.9
    assert record["source"] == "timm_vit" and record["experiment"] == "deit_tiny"
    assert record["init"]["num_initialised"] == 0 and record["checkpoint"] == str(path)
    assert (tmp_path / "timm" / "eval_config.yaml").is_file() and "eval imagenet_v2" in proc.stdout

    evaluate_in_process("experiment=deit_tiny", f"init.checkpoint={path}", "data=imagenet_v2",
                        f"data.root={folder}", "data.num_workers=0", "predictions=true", "transform=data",
                        f"out={tmp_path / 'data'}")
    assert eval_json(tmp_path / "data")["sets"]["imagenet_v2"]["transform"] == {"from": "data config"}
    assert predictions_of(tmp_path / "data") != reference  # the crop matters: the test can see it


def test_each_weights_file_evaluation_gets_a_new_directory_and_a_mixerlab_file_its_data_config(
        timm_file, tmp_path, monkeypatch):
    """Without out=, runs/eval/<preset>/<run id>, new each time. The same weights as a mixerlab checkpoint
    are read with the preset's data config, and predict as the timm file does under that config."""
    path, folder, model = timm_file
    state = {f"backbone.{k.replace('.attn.', '.mixer.')}": v for k, v in model.state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.5",
                "mixer_families": ["attention"] * 12}, ckpt)
    monkeypatch.chdir(tmp_path)
    common = ("experiment=deit_tiny", "data=imagenet_v2", f"data.root={folder}", "data.num_workers=0",
              "predictions=true")
    evaluate_in_process(*common, f"init.checkpoint={path}", "transform=data")
    evaluate_in_process(*common, f"init.checkpoint={ckpt}")
    made = sorted((tmp_path / "runs" / "eval" / "deit_tiny").iterdir(), key=lambda d: d.stat().st_mtime)
    first, second = made
    assert first != second
    assert eval_json(second)["source"] == "mixerlab"
    assert eval_json(second)["sets"]["imagenet_v2"]["transform"] == {"from": "data config"}
    assert predictions_of(first) == predictions_of(second)
    with pytest.raises(ConfigError, match=r"holds the evaluation of .*deit_tiny\.pth"):
        evaluate_in_process(*common, f"init.checkpoint={ckpt}", f"out={first}")


def test_bad_weights_file_commands_are_config_errors_before_a_model_is_built(timm_file, tmp_path,
                                                                             monkeypatch):
    path, folder, _ = timm_file

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr("mixerlab.build.build_backbone", no_model)
    v2 = ("data=imagenet_v2", f"data.root={folder}")
    cases = [
        ((), "nothing to evaluate: pass run="),
        ((f"run={tmp_path}", f"init.checkpoint={path}"), "are both set"),
        (("experiment=deit_tiny", f"init.checkpoint={tmp_path / 'no.pth'}", *v2), "no.pth'?: no such file"),
        ((f"init.checkpoint={path}", *v2), "needs experiment=PRESET"),
        ((f"run={tmp_path}", "experiment=deit_tiny"), "experiment=deit_tiny is for init.checkpoint"),
        (("experiment=gfnet_ti", f"init.checkpoint={path}", "transform=timm", *v2), "no timm counterpart"),
        (("experiment=deit_tiny", f"init.checkpoint={path}", "weights=ema", *v2), "init.ema=true"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            evaluate_in_process(*overrides)


def test_a_crop_given_on_the_command_line_wins_over_timms():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from mixerlab.evaluation import transform_settings

    register_eval_resolvers()
    for overrides in [(), ("data.crop_pct=0.95",)]:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="eval", return_hydra_config=True,
                          overrides=["experiment=convit_tiny", "data=imagenet_v2", *overrides])
        HydraConfig.instance().set_config(cfg)
        settings, origin = transform_settings(cfg, "convit_tiny", "timm_convit")
        assert origin == "timm convit_tiny" and settings.get("crop_pct") == (None if overrides else 0.875)
        assert settings["eval_interpolation"] == "bicubic"  # ConViT's timm config: crop 0.875, bicubic
