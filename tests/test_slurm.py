"""The SLURM path on a real one-node cluster (slurm/local-cluster.sh, started here as root): the sbatch
template trains with 2 tasks, requeued jobs (scontrol requeue; SIGUSR1) finish with the same weights as an
uninterrupted one, and a Hydra sweep through hydra/launcher=slurm runs as one job array."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mixerlab.checkpointing import checkpoint_step
from tests.conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

CLUSTER = REPO / "slurm" / "local-cluster.sh"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# 2 tasks x per-device batch 32 (global 64), 2 epochs of 22 steps, a checkpoint every 5 steps
RUN = (
    "trainer.max_epochs=2",
    "data.global_batch=64",
    "callbacks.checkpoint.every_n_steps=5",
    "~callbacks.progress",
    "+trainer.enable_progress_bar=false",
)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


def cluster_is_up() -> bool:
    return subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the local cluster (root) and stop it afterwards if this session started it."""
    started = False
    if os.geteuid() != 0:
        if not cluster_is_up():
            pytest.skip("starting slurm/local-cluster.sh needs root (or start it yourself first)")
    elif not cluster_is_up():
        proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        if proc.returncode:
            pytest.fail(f"slurm/local-cluster.sh start failed:\n{proc.stdout}\n{proc.stderr}")
        started = True
    yield
    if started and not os.environ.get("MIXERLAB_KEEP_SLURM"):
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.1)


def job_field(job: str, field: str) -> str:
    out = sh("scontrol", "show", "job", job, "-o").stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    return match.group(1) if match else ""


def sbatch(run_dir: Path, *overrides: str, tasks: int = 2) -> tuple[str, Path]:
    """Submit slurm/train.sbatch as a user would, from the repository root; return (job id, its log)."""
    log = run_dir.parent / f"{run_dir.name}.out"
    env = {**os.environ, "RUN_DIR": str(run_dir), "PYTHON": sys.executable}
    cmd = ["sbatch", "--parsable", f"--ntasks-per-node={tasks}", "--cpus-per-task=1", "--time=15",
           f"--output={log}", "slurm/train.sbatch", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0], log


def wait_done(job: str, log: Path, timeout: float = 400) -> str:
    wait_until(lambda: job_field(job, "JobState") in FINAL, timeout, f"job {job} to finish", log)
    return job_field(job, "JobState")


def release_requeued(job: str, log: Path) -> None:
    """A requeued job waits (reason BeginTime) before it may start again: let it start now."""
    wait_until(lambda: job_field(job, "JobState") == "PENDING", 120, f"job {job} to be requeued", log)
    sh("scontrol", "update", f"JobId={job}", "StartTime=now")


def accounting_states(job: str) -> list[str]:
    """Every incarnation of the job in the accounting database (-D: requeued ones too)."""
    out = sh("sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wait_for_accounting(job: str, states: list[str]) -> None:
    """slurmctld sends job records to slurmdbd asynchronously: sacct may lag the job by a moment."""
    wait_until(lambda: accounting_states(job) == states, 60, f"sacct to show {states} for job {job}")


def last_checkpoint_step(run_dir: Path) -> int:
    return checkpoint_step(run_dir / "checkpoints" / "last.ckpt")


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted_job(slurm_cluster, tmp_path_factory) -> tuple[str, Path, Path]:
    run_dir = tmp_path_factory.mktemp("slurm") / "uninterrupted"
    job, log = sbatch(run_dir, *RUN)
    assert wait_done(job, log) == "COMPLETED", log.read_text()[-4000:]
    return job, run_dir, log


def test_the_sbatch_template_trains_with_two_tasks_to_completion(uninterrupted_job):
    job, run_dir, log = uninterrupted_job
    summary = summary_of(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 44
    assert (summary["world_size"], summary["per_device_batch"], summary["global_batch"]) == (2, 32, 64)
    assert summary["run_dir"] == str(run_dir)
    wait_for_accounting(job, ["COMPLETED"])
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log.read_text()


def test_a_job_requeued_with_scontrol_resumes_to_the_same_weights(uninterrupted_job, tmp_path):
    """`scontrol requeue` gives no warning (SIGTERM, then SIGKILL): the job restarts with the same id, finds
    its run directory, and replays from the last periodic checkpoint."""
    _, reference_dir, _ = uninterrupted_job
    run_dir = tmp_path / "requeued"
    job, log = sbatch(run_dir, *RUN)
    wait_until(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), 300, "a first checkpoint", log)
    sh("scontrol", "requeue", job)
    assert 5 <= last_checkpoint_step(run_dir) < 44, "requeued too late to test a resume"
    release_requeued(job, log)

    assert wait_done(job, log) == "COMPLETED", log.read_text()[-4000:]
    assert job_field(job, "Restarts") == "1"
    wait_for_accounting(job, ["REQUEUED", "COMPLETED"])
    summary = summary_of(run_dir)
    assert summary["slurm_restart_count"] == 1 and 5 <= summary["resumed_from_step"] < 44, summary
    assert summary_of(run_dir)["weights_sha256"] == summary_of(reference_dir)["weights_sha256"]


def test_a_job_signalled_with_sigusr1_checkpoints_requeues_itself_and_resumes_to_the_same_weights(
    uninterrupted_job, tmp_path
):
    """The time-limit warning (`--signal=SIGUSR1@90`), sent by hand: mixerlab checkpoints at the end of
    the batch, runs `scontrol requeue`, and the restarted job resumes from that checkpoint."""
    _, reference_dir, _ = uninterrupted_job
    run_dir = tmp_path / "signalled"
    job, log = sbatch(run_dir, *RUN)
    wait_until(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), 300, "a first checkpoint", log)
    sh("scancel", "--signal=USR1", job)
    release_requeued(job, log)

    assert wait_done(job, log) == "COMPLETED", log.read_text()[-4000:]
    # durable evidence only (a requeue's kill can cut the log before a line reaches it): SLURM counted one
    # restart, the restarted job resumed from a checkpoint before the end, and the weights are exact
    assert job_field(job, "Restarts") == "1"
    wait_for_accounting(job, ["REQUEUED", "COMPLETED"])
    summary = summary_of(run_dir)
    assert summary["slurm_restart_count"] == 1 and 0 < summary["resumed_from_step"] < 44, summary
    assert summary["weights_sha256"] == summary_of(reference_dir)["weights_sha256"]


def test_a_sweep_through_the_hydra_launcher_runs_as_one_job_array_and_submitit_requeues_it(
    slurm_cluster, tmp_path
):
    """Two sweep points become one array; preempted mid-run with submitit's signal (SIGUSR2), both tasks
    are requeued by submitit (the one owner of requeue there) and finish from their checkpoints.

    The two points are equally fast models (attention with and without q/k/v bias) and each task is
    signalled once its own first checkpoint exists: a task signalled before submitit's handler is installed
    dies of SIGUSR2, and a much faster second model could finish before the first one is ever preempted."""
    values = ("true", "false")
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}",
           "hydra.launcher.timeout_min=15", f"mixer.qkv_bias={','.join(values)}", "trainer.max_epochs=2",
           "callbacks.checkpoint.every_n_steps=5", "~callbacks.progress",
           "+trainer.enable_progress_bar=false"]
    log = tmp_path / "multirun.log"

    def checkpointed(value: str) -> bool:
        run_dirs = (p.parent.parent.name.lower() for p in sweep_dir.rglob("last.ckpt"))  # Hydra writes True
        return any(name.endswith(f"qkv_bias={value}") for name in run_dirs)

    def submitted_arrays() -> set[str]:  # submitit keeps a folder <array>_<index> per task
        folder = sweep_dir / ".submitit"
        tasks = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return {name.split("_")[0] for name in tasks if re.fullmatch(r"\d+_\d+", name)}

    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: bool(submitted_arrays()), 120, "the job array to be submitted", log)
        arrays = submitted_arrays()
        assert len(arrays) == 1, arrays
        array = arrays.pop()
        for index, value in enumerate(values):  # array index i runs sweep point i
            wait_until(lambda v=value: checkpointed(v), 300, f"a first checkpoint of qkv_bias={value}", log)
            sh("scancel", "--signal=USR2", f"{array}_{index}")  # as a preemption would
        for index in range(len(values)):
            release_requeued(f"{array}_{index}", log)
        proc.wait(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()[-5000:]

    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("summary.json"))]
    assert len(summaries) == 2 and all(s["status"] == "completed" for s in summaries)
    assert summaries[0]["params"] != summaries[1]["params"], "the two sweep points are different models"
    assert {s["run_dir"] for s in summaries} == {str(p.parent) for p in sweep_dir.rglob("summary.json")}
    # submitit returns once both results are written; the tasks may still be finishing in SLURM
    wait_until(lambda: sorted(accounting_states(array)) == ["COMPLETED", "COMPLETED", "REQUEUED", "REQUEUED"],
               60, f"sacct to show both tasks of {array} requeued, then completed")
    task_logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert task_logs.count("this job is preempted") >= 2 and task_logs.count("resuming from") >= 2


def test_the_adaptive_seed_sweeper_runs_each_look_as_one_job_array(slurm_cluster, tmp_path):
    """hydra/sweeper=until_separated only calls the launcher's ``launch``: on SLURM each look is an array."""
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", "hydra/sweeper=until_separated",
           f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.timeout_min=15", "mixer=identity,attention",
           "hydra.sweeper.initial_seeds=2", "hydra.sweeper.max_seeds=3", "trainer.max_epochs=1",
           "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "~callbacks.progress",
           "+trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    record = json.loads((sweep_dir / "until_separated.json").read_text())
    assert record["stopped"] in ("separated", "cap")
    tasks = [p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]
    assert len({name.split("_")[0] for name in tasks}) == len(record["looks"])
    runs = [f"{label},seed={seed}" for label, entry in record["looks"][-1]["configs"].items()
            for seed in entry["seeds"]]
    assert all(json.loads((sweep_dir / run / "summary.json").read_text())["status"] == "completed"
               for run in runs)
