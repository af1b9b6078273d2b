"""A real sweep, crashed and finished: `python train.py -m seed=0,1,2 ...` on the embedded digits.

First run (faults armed): seed=0 completes, seed=1 hits a NaN loss at step 2 (first step of epoch 1), seed=2
is killed (SIGKILL) at the start of its epoch 1, as a crash or preemption would. Second run, the same
command with the faults disarmed: seed=0 is skipped, seed=1 is set aside and run again, seed=2 resumes from
its epoch-0 checkpoint; the report shows each job once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixerlab.report import read_curves
from mixerlab.sweep import SweepIndex
from tests.conftest import run_train
from tests.faults import ENV as FAULTS_ENV

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

COMMAND = [
    "-m", "seed=0,1,2",
    "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
    "callbacks.progress.refresh_rate=0",
    "+callbacks.fault._target_=tests.faults.InjectNonFinite", "+callbacks.fault.at_step=2",
    "+callbacks.fault.only_in='seed=1'",
    "+callbacks.pause._target_=tests.faults.PauseAtEpoch", "+callbacks.pause.epoch=1",
    "+callbacks.pause.only_in='seed=2'",
]


def _sweep(cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *COMMAND], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def crashed_then_finished(tmp_path_factory):
    """Run the sweep with faults, kill it in its last job, run it again; snapshot the state in between."""
    cwd = tmp_path_factory.mktemp("sweep")
    marker = cwd / "paused"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    first = _sweep(cwd, {**env, FAULTS_ENV: str(marker)})
    deadline = time.monotonic() + 300
    while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.kill()  # SIGKILL: no handler runs, nothing gets written on the way out
    first_output = first.communicate()[0]
    assert marker.exists(), f"the sweep never reached the pause in seed=2:\n{first_output[-4000:]}"

    sweeps = list((cwd / "runs" / "sweeps").iterdir())
    assert len(sweeps) == 1, sweeps
    sweep_dir = sweeps[0]
    after_crash = {
        "index": json.loads((sweep_dir / "sweep.json").read_text()),
        "seed0": _summary(sweep_dir / "seed=0"),
        "seed1": _summary(sweep_dir / "seed=1"),
        "seed1_ckpt": torch.load(sweep_dir / "seed=1/checkpoints/last.ckpt", map_location="cpu",
                                 weights_only=False),
        "seed2_files": sorted(p.name for p in (sweep_dir / "seed=2").iterdir()),
        "seed2_curves": read_curves(sweep_dir / "seed=2" / "metrics.csv"),
        "output": first_output,
        "rescanned": {job["job"]: job["status"] for job in SweepIndex(sweep_dir).scan()["jobs"]},
    }
    second = _sweep(cwd, env)
    second_output = second.communicate(timeout=400)[0]
    assert second.returncode == 0, second_output[-5000:]
    return sweep_dir, after_crash, second_output


def test_a_failing_job_is_recorded_as_failed_and_the_sweep_goes_on(crashed_then_finished):
    _, crashed, _ = crashed_then_finished
    assert crashed["seed0"]["status"] == "completed"
    assert crashed["seed1"]["status"] == "failed"
    assert "checkpoints" in crashed["seed2_files"]  # the sweep went on to seed=2
    statuses = {job["job"]: job["status"] for job in crashed["index"]["jobs"]}
    assert statuses == {"seed=0": "completed", "seed=1": "failed", "seed=2": "running"}  # as last seen
    assert crashed["rescanned"]["seed=2"] == "incomplete"  # its directory: started, no summary


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(crashed_then_finished):
    _, crashed, _ = crashed_then_finished
    error = crashed["seed1"]["error"]
    assert error.startswith("NonFiniteError: non-finite loss (nan) at step 2 (epoch 1, batch 0)"), error
    assert "recipe.nan_policy=skip" in error
    ckpt = crashed["seed1_ckpt"]
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 2)  # written at the end of epoch 0, never after
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())


def test_rerun_skips_completed_resumes_killed_and_reruns_failed(crashed_then_finished):
    sweep_dir, crashed, output = crashed_then_finished
    assert "3 jobs, 1 completed before (skipped), 1 resuming from a checkpoint" in output
    assert "skipped (completed before): seed=0" in output
    assert _summary(sweep_dir / "seed=0") == crashed["seed0"]  # untouched
    assert "job seed=1 failed before" in output
    attempt = sweep_dir / "seed=1" / "failed-attempts" / "1"
    assert _summary(attempt)["error"] == crashed["seed1"]["error"]  # the failed attempt's files are kept
    assert (attempt / "checkpoints" / "last.ckpt").is_file()
    seed1, seed2 = _summary(sweep_dir / "seed=1"), _summary(sweep_dir / "seed=2")
    assert seed1["status"] == seed2["status"] == "completed"
    assert seed1["epochs"] == seed2["epochs"] == 2
    assert "resuming from" in (sweep_dir / "seed=2" / "train.log").read_text()
    curves = read_curves(sweep_dir / "seed=2" / "metrics.csv")
    assert [row["epoch"] for row in curves] == [0, 1]
    assert curves[0] == crashed["seed2_curves"][0]  # the epoch logged before the kill is still there


def test_report_shows_each_job_once_after_a_kill_and_rerun(crashed_then_finished):
    sweep_dir, _, output = crashed_then_finished
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert [job["job"] for job in index["jobs"]] == ["seed=0", "seed=1", "seed=2"]
    assert {job["status"] for job in index["jobs"]} == {"completed"}
    seed1 = index["jobs"][1]
    assert seed1["attempts"] == 2 and seed1["previous_errors"][0].startswith("NonFiniteError")
    assert f"report: {sweep_dir / 'report.html'}" in output
    page = (sweep_dir / "report.html").read_text()
    assert page.count('<tr class="completed"') == 3
    assert all(page.count(f'data-run="seed={seed}"') == 1 for seed in range(3))
    md = (sweep_dir / "report.md").read_text()
    assert "| attention | " in md and "(n=3)" in md  # three seeds of one configuration: mean ± std


def test_a_named_sweep_whose_jobs_changed_stops_before_running_anything(tmp_path):
    sweep_dir = tmp_path / "runs" / "sweeps" / "abl"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": "abl", "varied": ["seed"], "jobs": [
        {"job": "seed=0", "run_dir": "seed=0", "overrides": ["seed=0", "trainer.max_epochs=1"]}]}))
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "seed=0,1", "sweep.name=abl",
                           "trainer.max_epochs=2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "cannot start the sweep" in proc.stderr and "seed=0: was" in proc.stderr
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep.json"]  # no job ran, nothing changed


def test_a_single_run_writes_no_sweep_index(tmp_path):
    """Hydra calls the sweep callback's job hooks in single runs too; they belong to no sweep."""
    sweep_dir = tmp_path / "sweeps" / "unnamed"
    _, summary = run_train(tmp_path / "run", f"hydra.sweep.dir={sweep_dir}", "trainer.max_epochs=1",
                           "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
                           "callbacks.progress.refresh_rate=0")
    assert summary["status"] == "completed"
    assert not sweep_dir.exists()
