"""``hydra/launcher=local_parallel``: a real sweep of three jobs, two at a time on one thread each, where one
job's loss turns NaN and another job's process is killed (SIGKILL) in its first step. The third completes
with the weights of the same job run alone on one thread; the two others are recorded failed with their
reasons; progress lines show each start and finish; the same command, faults disarmed, skips the completed
job and runs the two others to completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hydra_plugins.mixerlab_sweeps.local_parallel import cores_per_job
from tests.conftest import REPO, every_json_parses, kill_sweep_when, run_train
from tests.faults import ENV as FAULTS_ENV

BUDGET = ("trainer.max_epochs=1", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1",
          "callbacks.progress.refresh_rate=0", "sweep.report=true")
FAULTS = ("+callbacks.fault._target_=tests.faults.InjectNonFinite", "+callbacks.fault.at_step=1",
          "+callbacks.fault.only_in='seed=1'",
          "+callbacks.kill._target_=tests.faults.KillAt", "+callbacks.kill.step=1",
          "+callbacks.kill.only_in='seed=2'")
COMMAND = ("-m", "seed=0,1,2", "hydra/launcher=local_parallel", "hydra.launcher.jobs=2",
           "hydra.launcher.threads_per_job=1", *BUDGET, *FAULTS)


def test_cores_per_job_splits_the_machine_and_names_a_bad_setting():
    assert cores_per_job(2, "auto", cores=2) == 1
    assert cores_per_job(8, "auto", cores=16) == 2
    assert cores_per_job(4, "auto", cores=2) == 1  # never 0
    assert cores_per_job(2, 3, cores=2) == 3
    with pytest.raises(ValueError, match="hydra.launcher.jobs"):
        cores_per_job(0, "auto")
    with pytest.raises(ValueError, match="hydra.launcher.threads_per_job"):
        cores_per_job(2, "all")


def _summary(sweep_dir: Path, seed: int) -> dict:
    return json.loads((sweep_dir / f"seed={seed}" / "summary.json").read_text())


def _run(cwd: Path, env: dict, command: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _sweep(cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return _run(cwd, env, COMMAND)


@pytest.fixture(scope="module")
def faulty_then_rerun(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("parallel")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    first = _sweep(cwd, {**env, FAULTS_ENV: str(cwd / "armed")})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    (sweep_dir,) = (cwd / "runs" / "sweeps").iterdir()
    summaries = {seed: _summary(sweep_dir, seed) for seed in range(3)}
    index = json.loads((sweep_dir / "sweep.json").read_text())
    second = _sweep(cwd, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    return cwd, sweep_dir, first.stdout, summaries, index, second.stdout


@pytest.mark.slow
def test_a_crashed_and_a_killed_job_leave_the_other_completing(faulty_then_rerun):
    _, sweep_dir, output, summaries, index, _ = faulty_then_rerun
    assert summaries[0]["status"] == "completed"
    assert summaries[1]["status"] == "failed" and summaries[1]["error"].startswith("NonFiniteError")
    assert summaries[2]["status"] == "failed"
    assert summaries[2]["error"].startswith("JobProcessDied") and "exit code" in summaries[2]["error"]
    assert {job["job"]: job["status"] for job in index["jobs"]} == {
        "seed=0": "completed", "seed=1": "failed", "seed=2": "failed"}
    assert (sweep_dir / "report.html").is_file()  # the sweep callback's end still ran


@pytest.mark.slow
def test_progress_shows_each_start_and_finish_with_counts(faulty_then_rerun):
    _, _, output, _, _, _ = faulty_then_rerun
    assert "[local_parallel] 3 jobs, 2 at a time, 1 core(s) each" in output
    assert output.count("[local_parallel] start ") == 3 and output.count("[local_parallel] finish ") == 3
    assert "3/3 done" in output and "ETA" in output
    assert "FAILED (JobProcessDied" in output


@pytest.mark.slow
def test_a_parallel_job_has_the_weights_of_the_same_job_run_alone(faulty_then_rerun, tmp_path):
    _, _, _, summaries, _, _ = faulty_then_rerun
    _, alone = run_train(tmp_path / "alone", "seed=0", "fastpath.cpu_threads=1", *BUDGET)
    assert summaries[0]["fast_path"]["cpu_threads"] == alone["fast_path"]["cpu_threads"] == 1
    assert summaries[0]["weights_sha256"] == alone["weights_sha256"]


@pytest.mark.slow
def test_rerun_skips_the_completed_job_and_finishes_the_failed_ones(faulty_then_rerun):
    _, sweep_dir, _, summaries, _, output = faulty_then_rerun
    assert "3 jobs, 1 completed before (skipped)" in output
    assert "[local_parallel] skip   #0 seed=0: completed before" in output  # no process started for it
    assert output.count("[local_parallel] start ") == 2
    after = {seed: _summary(sweep_dir, seed) for seed in range(3)}
    assert after[0] == summaries[0]
    assert after[1]["status"] == after[2]["status"] == "completed"
    assert json.loads((sweep_dir / "sweep.json").read_text())["counts"]["completed"] == 3


# two jobs side by side; seed=1 pauses at the start of its second epoch (its first epoch's checkpoint written)
# while the faults are armed
KILLABLE = ("-m", "seed=0,1", "hydra/launcher=local_parallel", "hydra.launcher.jobs=2",
            "hydra.launcher.threads_per_job=1", "trainer.max_epochs=2", "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1", "callbacks.progress.refresh_rate=0", "sweep.report=false",
            "+callbacks.pause._target_=tests.faults.PauseAtEpoch", "+callbacks.pause.epoch=1",
            "+callbacks.pause.only_in='seed=1'")


@pytest.mark.slow
def test_a_parallel_sweep_killed_with_its_jobs_then_run_again_skips_the_finished_job_and_completes(tmp_path):
    from mixerlab.sweep import read_summary

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    cmd = [sys.executable, str(REPO / "train.py"), *KILLABLE]
    paused = tmp_path / "paused"

    def seed0_done_and_seed1_paused() -> bool:
        sweeps = list((tmp_path / "runs" / "sweeps").glob("*/seed=0"))
        done = bool(sweeps) and (read_summary(sweeps[0]) or {}).get("status") == "completed"
        return done and paused.exists()

    kill_sweep_when(cmd, tmp_path, {**env, FAULTS_ENV: str(paused)}, seed0_done_and_seed1_paused)
    (sweep_dir,) = (tmp_path / "runs" / "sweeps").iterdir()
    every_json_parses(tmp_path)
    finished = (sweep_dir / "seed=0" / "summary.json").read_bytes()
    assert not (sweep_dir / "seed=1" / "summary.json").exists()  # killed with the sweep: no word written
    assert (sweep_dir / "seed=1" / "checkpoints" / "last.ckpt").is_file()

    again = _run(cwd=tmp_path, env=env, command=KILLABLE)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "[local_parallel] skip   #0 seed=0: completed before" in again.stdout
    assert again.stdout.count("[local_parallel] start ") == 1
    assert (sweep_dir / "seed=0" / "summary.json").read_bytes() == finished  # untouched
    seed1 = _summary(sweep_dir, 1)
    assert seed1["status"] == "completed" and seed1["resumed_from_step"] == 2
    assert json.loads((sweep_dir / "sweep.json").read_text())["counts"]["completed"] == 2
    every_json_parses(tmp_path)
