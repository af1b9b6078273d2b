"""`python train.py` end to end: a trained model, a complete summary, reproducible weights, fast failure."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SUMMARY_KEYS = {
    "status",
    "top1",
    "top5",
    "best_top1",
    "params",
    "flops",
    "train_images_per_s",
    "step_memory_mb",
    "step_memory_method",
    "step_memory_batch",
    "process_peak_memory_mb",
    "wall_s",
    "epochs",
    "mixer",
    "backbone",
    "data",
    "seed",
    "git_commit",
    "weights_sha256",
    "world_size",
    "global_batch",
}


def test_default_training_beats_chance_and_writes_a_complete_run_directory(train_run):
    proc, summary = train_run("trainer.max_epochs=5", "recipe.warmup_epochs=1")
    assert summary["status"] == "completed"
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["top1"] > 30, summary  # 10 classes: chance is 10%
    assert summary["best_top1"] >= summary["top1"]
    assert summary["epochs"] == 5 and summary["params"] > 0 and summary["flops"] > 0
    assert summary["step_memory_batch"] == 64 and 0 < summary["step_memory_mb"] < 500
    assert summary["step_memory_method"].startswith("cpu: peak of live tensor storages")
    assert len(summary["weights_sha256"]) == 64
    assert (summary["mixer"], summary["backbone"], summary["data"]) == ("attention", "vit_micro", "digits")
    run_dir = summary["run_dir"]
    config = yaml.safe_load(open(f"{run_dir}/config.yaml"))
    assert (
        config["mixer"]["_target_"] == "mixers.attention.Attention" and config["trainer"]["max_epochs"] == 5
    )
    rows = list(csv.DictReader(open(f"{run_dir}/metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert {"train/loss", "val/top1", "val/top5", "lr", "train/images_per_s"} <= rows[0].keys()
    last_line = proc.stdout.strip().splitlines()[-1]
    assert run_dir in last_line and "top1" in last_line


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(train_run):
    with ThreadPoolExecutor(max_workers=3) as pool:  # three processes at once: mostly start-up time
        done = pool.map(lambda seed: train_run("trainer.max_steps=12", f"seed={seed}"), (3, 3, 4))
        runs = [summary for _, summary in done]
    assert runs[0]["weights_sha256"] == runs[1]["weights_sha256"]
    assert runs[0]["weights_sha256"] != runs[2]["weights_sha256"]


def test_accumulation_scales_global_batch_and_lr(train_run):
    _, summary = train_run("trainer.max_steps=4", "trainer.accumulate_grad_batches=2", "data.batch_size=32")
    assert summary["global_batch"] == 64
    assert summary["lr"] == pytest.approx(2e-3 * 64 / 64)


def test_constant_decay_holds_the_peak_lr_where_cosine_decays_it(train_run):
    def lrs(*overrides):
        _, summary = train_run("trainer.max_epochs=2", "recipe.warmup_epochs=0", *overrides)
        with open(Path(summary["run_dir"]) / "metrics.csv") as f:
            return summary["lr"], [float(row["lr"]) for row in csv.DictReader(f) if row.get("lr")]

    with ThreadPoolExecutor(max_workers=2) as pool:
        held, decayed = pool.submit(lrs, "recipe.decay=constant"), pool.submit(lrs)
        (peak, constant), (peak_cosine, cosine) = held.result(), decayed.result()
    assert constant == [pytest.approx(peak)] * 2
    assert cosine[0] < peak_cosine and cosine[1] == pytest.approx(1e-5)  # recipe.min_lr at the last step


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["backbone.embed_dim=65"], ["backbone.embed_dim=65", "num_heads=2"]),
        (["data.img_size=18"], ["data.img_size=18", "backbone.patch_size=4"]),
        (["backbone.block.style=pre"], ["backbone.block.style='pre'"]),
        (["backbone.head=mean"], ["backbone.head='mean'"]),
        (["recipe.decay=linear"], ["recipe.decay='linear'", "cosine, constant"]),
    ],
)
def test_impossible_configs_fail_before_any_data_is_loaded(tmp_path, overrides, named):
    proc = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    for text in named:
        assert text in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "checkpoints").exists()
    assert "Epoch" not in proc.stdout


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", "backbone=vit_huge"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "vit_huge" in proc.stderr and "vit_tiny" in proc.stderr and "vit_small" in proc.stderr


def test_model_info_prints_size_and_cost_without_data():
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/model_info.py",
            "backbone=vit_tiny",
            "data.img_size=224",
            "data.num_classes=1000",
            "data.in_chans=3",
            "--memory-batch=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["params"] == 5_717_416 and info["tokens"] == 197
    assert info["mixer"] == "attention" and info["backbone"] == "vit_tiny"
    assert abs(info["flops"] / 2.52e9 - 1) < 0.03
    weights_grads_adam = 4 * 5_717_416 * 4 / 2**20
    assert info["step_memory_batch"] == 2 and info["step_memory_mb"] > weights_grads_adam


@pytest.mark.parametrize(
    "budget",
    [
        ("trainer.max_steps=3",),  # stops inside the first epoch
        ("trainer.max_epochs=1", "+trainer.limit_train_batches=3"),  # the epoch validated: nothing to add
        ("trainer.max_epochs=1", "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=2"),
    ],
    ids=["max_steps_inside_an_epoch", "last_epoch_validated", "last_epoch_not_a_validation_epoch"],
)
def test_every_completed_run_validates_its_final_weights_exactly_once(train_run, budget):
    _, summary = train_run(*budget, "~callbacks.progress", "+trainer.enable_progress_bar=false")
    assert summary["status"] == "completed" and summary["top1"] is not None, summary
    assert summary["best_top1"] == summary["top1"]
    with open(Path(summary["run_dir"]) / "metrics.csv") as f:
        validations = [row for row in csv.DictReader(f) if row.get("val/top1")]
    assert len(validations) == 1 and int(validations[0]["epoch"]) == 0
    assert float(validations[0]["val/top1"]) == pytest.approx(summary["top1"], abs=0.01)
