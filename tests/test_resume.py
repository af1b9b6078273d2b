"""Checkpoints and exact resume on the CPU: a run SIGKILLed anywhere and re-run with the same command ends
with the same weights (and EMA, history, metrics) as a run that was never interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data.base import ImageDataModule
from data.sampling import EpochSampler
from mixerlab.checkpointing import AtomicCheckpointIO, checkpoint_step
from tests.conftest import REPO, run_train

# Randomness in every part of the step (drop-path: torch RNG; Mixup/CutMix: numpy RNG), an EMA, and a
# checkpoint every 5 optimizer steps; 2 epochs of 22 steps.
RUN = (
    "trainer.max_epochs=2",
    "callbacks.checkpoint.every_n_steps=5",
    "recipe.ema_decay=0.9",
    "recipe.mixup.prob=1.0",
    "backbone.drop_path_rate=0.1",
    "~callbacks.progress",
    "+trainer.enable_progress_bar=false",
)
ENV = {"OMP_NUM_THREADS": "1"}
KILL = "+callbacks.kill._target_=tests.faults.KillAt"


def last_checkpoint_step(run_dir: Path) -> int:
    return checkpoint_step(run_dir / "checkpoints" / "last.ckpt")


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    _, summary = run_train(run_dir, *RUN, env=ENV)
    return run_dir, summary


def killed(run_dir: Path, step: int, hook: str) -> None:
    proc, _ = run_train(run_dir, *RUN, KILL, f"+callbacks.kill.step={step}", f"+callbacks.kill.hook={hook}",
                        check=False, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def killed_from_outside_after_next_checkpoint(run_dir: Path) -> None:
    """SIGKILL from another process at whatever moment the next periodic checkpoint has appeared."""
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns
    cmd = [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run_dir}", *RUN]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while last.stat().st_mtime_ns == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()


def test_a_run_killed_at_many_points_resumes_to_the_same_weights(uninterrupted, tmp_path):
    ref_dir, ref = uninterrupted
    run_dir = tmp_path / "run"
    started = time.monotonic()
    # (step, hook, the checkpoint the next start resumes from)
    for step, hook, resumes_from in [
        (7, "batch_start", 5),  # mid-epoch, two steps after a periodic checkpoint
        (22, "validation", 20),  # last step of epoch 0 done, killed during its validation
        (22, "batch_start", 22),  # first batch of epoch 1, right after the epoch-end checkpoint
        (33, "batch_end", 30),  # mid-epoch again, after a resume
    ]:
        killed(run_dir, step, hook)
        assert last_checkpoint_step(run_dir) == resumes_from, (step, hook)
    first_five = time.monotonic() - started
    killed_from_outside_after_next_checkpoint(run_dir)  # and once at a moment nobody chose
    resumed_from = last_checkpoint_step(run_dir)
    assert 35 <= resumed_from < 44, "killed too late to test a resume"
    earlier = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["wall_s"]
    attempts_took = time.monotonic() - started
    _, summary = run_train(run_dir, *RUN, env=ENV)

    assert summary["resumed_from_step"] == resumed_from and "resumed_from_step" not in ref
    # wall_s covers all six attempts, each up to the checkpoint the next one resumed from (the first five
    # lost a few steps each after their checkpoint; mostly they were start-up and steps kept)
    assert 0.5 * first_five < earlier < attempts_took and summary["attempt_wall_s"] > 0
    assert summary["wall_s"] == pytest.approx(earlier + summary["attempt_wall_s"], abs=0.02)
    assert "attempt_wall_s" not in ref and "wall_s_covers" not in summary

    assert summary["status"] == "completed" and summary["steps"] == ref["steps"] == 44
    assert summary["weights_sha256"] == ref["weights_sha256"]
    for key in ("top1", "top5", "best_top1", "top1_ema", "train_loss"):
        assert summary[key] == ref[key], key
    ours, theirs = final_state(run_dir), final_state(ref_dir)
    assert ours.keys() == theirs.keys() and any(k.startswith("ema.") for k in ours)
    for key in ours:  # EMA and metric buffers too, bit for bit
        assert torch.equal(ours[key], theirs[key]), key


def test_checkpoints_load_weights_only_and_hold_the_whole_training_state(uninterrupted):
    run_dir, _ = uninterrupted
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # no pickled code
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"][0]["state"], "AdamW moments"
    assert ckpt["lr_schedulers"][0]["base_values"], "timm scheduler state"
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] >= 1
    assert ckpt["DigitsDataModule"] == {"epoch": 2, "batches": 0, "batch_size": 64, "world_size": 1}
    (rng,) = ckpt["rng_states"]  # one entry per rank
    assert set(rng) == {"torch", "cuda", "numpy", "python"}
    assert len(ckpt["history"]) == 2 and "train_loss_per_rank" in ckpt
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["per_device_batch"] == summary["global_batch"] == 64


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def torn_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary files left behind"


def test_sigkill_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path):
    """A process rewriting a 16 MB checkpoint in a loop is SIGKILLed; the file always loads whole."""
    script = (
        "import sys, torch\n"
        "from mixerlab.checkpointing import AtomicCheckpointIO\n"
        "io, i = AtomicCheckpointIO(), 0\n"
        "while True:\n"
        "    i += 1\n"
        "    io.save_checkpoint({'i': i, 'w': torch.full((4_000_000,), float(i))}, sys.argv[1])\n"
        "    print(i, flush=True)\n"
    )
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "1"  # one complete save, the next one under way
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    io = AtomicCheckpointIO()
    ckpt = io.load_checkpoint(path)
    assert ckpt["i"] >= 1 and bool((ckpt["w"] == ckpt["i"]).all())
    io.save_checkpoint({"i": 0}, path)  # the next save clears what the killed one left
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"payload": Path("/")}, path)  # an arbitrary class: weights_only=True must refuse it
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_a_resumed_epoch_continues_the_same_data_order():
    full = EpochSampler(100, seed=3, rank=1, world_size=2)
    full.set_epoch(4)
    resumed = EpochSampler(100, seed=3, rank=1, world_size=2)
    resumed.resume_at(4, 20)  # also sets the epoch: Lightning may iterate before set_epoch
    assert list(resumed) == list(full)[20:]
    assert len(resumed) == len(full) == 50  # the loop still counts a whole epoch
    resumed.set_epoch(5)
    full.set_epoch(5)
    assert list(resumed) == list(full), "the skip applies to the resumed epoch only"


def test_resuming_mid_epoch_with_another_world_size_is_refused():
    data = ImageDataModule(img_size=8, in_chans=1, num_classes=2, batch_size=16)
    data.load_state_dict({"epoch": 1, "batches": 3, "batch_size": 16, "world_size": 2})
    with pytest.raises(Exception, match="same devices"):
        data._resume_sampler(EpochSampler(64), world=1)


def test_a_run_resumed_mid_epoch_times_only_what_it_trained_since_the_resume(tmp_path):
    """The clock ticks one second per batch: the resumed epoch's rate is the batch size exactly if the timer
    counts the images and the seconds since the resume (Lightning skips the epoch-start hook there)."""
    run = ("trainer.max_epochs=1", "callbacks.checkpoint.every_n_steps=5", "~callbacks.progress",
           "+trainer.enable_progress_bar=false", "+callbacks.clock._target_=tests.faults.StepClock")
    run_dir = tmp_path / "run"
    proc, _ = run_train(run_dir, *run, KILL, "+callbacks.kill.step=7", check=False, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert last_checkpoint_step(run_dir) == 5
    _, summary = run_train(run_dir, *run, env=ENV)
    assert summary["resumed_from_step"] == 5 and summary["steps"] == 22
    rows = [row for row in csv.DictReader(open(run_dir / "metrics.csv")) if row.get("train/images_per_s")]
    assert len(rows) == 1 and float(rows[0]["train/images_per_s"]) == summary["per_device_batch"] == 64
    assert summary["train_images_per_s"] == 64


def test_a_run_resumed_from_a_checkpoint_without_wall_time_says_its_wall_s_is_the_last_attempts():
    """A checkpoint written before checkpoints held the run's wall time: the summary cannot add the earlier
    attempts, so it says what wall_s covers instead of passing the last attempt off as the run."""
    from types import SimpleNamespace

    from mixerlab.training import _wall

    started = time.perf_counter() - 3.0
    fresh = _wall(SimpleNamespace(earlier_wall_s=0.0), started, resumed=False)
    assert set(fresh) == {"wall_s"} and fresh["wall_s"] >= 3.0
    resumed = _wall(SimpleNamespace(earlier_wall_s=100.0), started, resumed=True)
    assert resumed["wall_s"] == pytest.approx(100.0 + resumed["attempt_wall_s"], abs=0.01)
    old = _wall(SimpleNamespace(earlier_wall_s=None), started, resumed=True)
    assert old["wall_s"] == old["attempt_wall_s"] >= 3.0 and "holds no wall time" in old["wall_s_covers"]
