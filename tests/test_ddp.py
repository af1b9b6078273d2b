"""Distributed training on the CPU (gloo): processes started by torchrun, one shared run directory, and
two processes with batch b training exactly what one process with batch 2b trains."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from data.digits import DigitsDataModule
from mixerlab.errors import ConfigError
from mixerlab.training import check_launcher
from tests.conftest import REPO, run_train

# 2 epochs of 8 steps with global batch 64; no Mixup (each rank would draw its own mixing coefficient)
RUN = (
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=8",
    "~callbacks.progress",
    "+trainer.enable_progress_bar=false",
)
ENV = {"OMP_NUM_THREADS": "1"}


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def weights(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory) -> Path:
    """``torchrun --standalone --nproc_per_node=2 train.py trainer=ddp data.global_batch=64`` in an empty
    directory, with the default run directory (runs/default/<run id>) so the ranks must agree on it."""
    cwd = tmp_path_factory.mktemp("torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "trainer=ddp", "data.global_batch=64", *RUN]
    env = {**os.environ, **ENV}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    (run_dir,) = (cwd / "runs" / "default").iterdir()  # ONE directory for both ranks
    return run_dir


def test_torchrun_ranks_share_one_run_directory_and_only_rank_zero_writes(torchrun_run):
    assert torchrun_run.name.startswith("torchrun-")
    summary = json.loads((torchrun_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["world_size"], summary["num_nodes"], summary["per_device_batch"]) == (2, 1, 32)
    assert summary["global_batch"] == 64
    assert (torchrun_run / ".hydra" / "config.yaml").is_file()
    assert not (torchrun_run / "multirun.yaml").exists()
    log = (torchrun_run / "train.log").read_text()
    assert "GLOBAL_RANK: 1" not in log, "rank 1 must not write the run's log"


def test_two_processes_with_batch_b_match_one_process_with_batch_2b(torchrun_run, tmp_path):
    single_dir = tmp_path / "single"
    _, single = run_train(single_dir, "data.batch_size=64", *RUN, env=ENV)
    ddp = json.loads((torchrun_run / "summary.json").read_text())
    for key in ("global_batch", "lr", "steps"):
        assert single[key] == ddp[key], key

    for one, two in zip(history(single_dir), history(torchrun_run), strict=True):
        for key in ("train/loss", "val/loss", "val/top1", "lr"):
            assert float(one[key]) == pytest.approx(float(two[key]), rel=1e-4, abs=1e-5), key
    ours, theirs = weights(single_dir), weights(torchrun_run)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-4, msg=key)


def test_round_robin_dealing_gives_each_global_batch_the_same_samples():
    """Rank r takes positions r, r+2, ...; its k-th batch of b with the other rank's is positions
    [2bk, 2bk+2b) -- the single process's k-th batch of 2b."""
    from data.sampling import EpochSampler

    b = 4
    single = list(EpochSampler(37, seed=1))
    ranks = [list(EpochSampler(37, seed=1, rank=r, world_size=2)) for r in range(2)]
    for k in range(37 // (2 * b)):
        together = ranks[0][k * b : (k + 1) * b] + ranks[1][k * b : (k + 1) * b]
        assert sorted(together) == sorted(single[2 * b * k : 2 * b * (k + 1)])


def test_global_batch_sets_the_per_device_batch():
    data = DigitsDataModule(batch_size=7, global_batch=256)
    assert data.resolve_batch_size(world_size=8, accumulation=2) == 16
    with pytest.raises(ConfigError, match="data.global_batch=256"):
        DigitsDataModule(global_batch=256).resolve_batch_size(world_size=3)
    assert DigitsDataModule(batch_size=48).resolve_batch_size(world_size=4) == 48  # per device when unset


def test_several_devices_without_an_outside_launcher_fail_fast():
    """Lightning would re-run sys.argv for the other ranks: under Hydra that multiplies runs."""
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="torchrun --standalone --nproc_per_node=2"):
        check_launcher(trainer)
