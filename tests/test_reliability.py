"""Damaged files, a full disk and kills (docs/reliability.md): each ends in one line naming the file or the
full disk, with no traceback, and nothing already written is lost.

One tiny run (2 epochs of 4 steps, a checkpoint every 2 steps) is trained once; the other tests damage
copies of it, evaluate it, report it, or repeat its command on a small file system.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixerlab.checkpointing import checkpoint_step
from mixerlab.errors import ConfigError, DamagedFileError, DiskFullError
from mixerlab.evaluation import merge_eval, read_eval
from mixerlab.pretrained import read_state_dict
from mixerlab.storage import disk_full, load_torch_file, read_config_file, read_json_file
from mixerlab.sweep import SweepIndex, job_status
from tests.conftest import REPO, run_train

pytestmark = pytest.mark.slow

RUN = ("trainer.max_epochs=2", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2",
       "backbone.depth=2", "callbacks.checkpoint.every_n_steps=2", "~callbacks.progress",
       "+trainer.enable_progress_bar=false")
ENV = {"OMP_NUM_THREADS": "1"}


def run_script(script: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **ENV})
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess, kind: str) -> str:
    """The process failed with exactly one line of ``kind``, and no traceback anywhere in its output."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{kind}: "), proc.stderr[-3000:]
    return last


def cut(src: Path, dst: Path, size: int) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def every_json_parses(root: Path) -> list[Path]:
    """Every JSON file under ``root`` (temporary files excepted) parses: none is half-written."""
    files = [p for p in root.rglob("*.json") if not p.name.startswith(".")]
    for path in files:
        json.loads(path.read_text())
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    _, summary = run_train(run_dir, *RUN, env=ENV)
    assert summary["status"] == "completed"
    return run_dir, summary


# ------------------------------------------------------------------------------------ damaged files
def test_a_cut_empty_or_foreign_torch_file_is_named_with_what_is_wrong(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.randn(64, 64)}, whole)
    cases = {cut(whole, tmp_path / "cut.pth", 4000): "truncated",
             cut(whole, tmp_path / "empty.pth", 0): "empty"}
    (tmp_path / "text.pth").write_text('{"not": "torch"}')
    cases[tmp_path / "text.pth"] = "not a torch file"
    for path, what in cases.items():
        with pytest.raises(DamagedFileError, match=what) as info:
            load_torch_file(path, "init.checkpoint", "download it again")
        assert str(path) in str(info.value) and "download it again" in str(info.value)
    assert load_torch_file(whole, "x", "y")["w"].shape == (64, 64)


def test_a_weights_file_cut_to_100kb_is_a_config_error_naming_it(tmp_path):
    whole = tmp_path / "deit.pth"
    torch.save({"model": {"w": torch.randn(256, 256)}}, whole)
    with pytest.raises(ConfigError, match=r"init.checkpoint: .*part\.pth is truncated"):
        read_state_dict(cut(whole, tmp_path / "part.pth", 100_000))


def test_a_damaged_run_checkpoint_is_named_before_resume(trained, tmp_path):
    run_dir, _ = trained
    damaged = cut(run_dir / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt", 5000)
    with pytest.raises(DamagedFileError, match=r"run checkpoint: .*last\.ckpt is truncated.*move it aside"):
        checkpoint_step(damaged)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 8


def test_damaged_json_records_are_named_and_eval_json_is_never_merged_over(tmp_path):
    for text, what in [("", "is empty"), ('{"sets": {"clean"', "not valid JSON"), ("[1, 2]", "JSON list")]:
        (tmp_path / "eval.json").write_text(text)
        with pytest.raises(DamagedFileError, match=what):
            read_eval(tmp_path)
        with pytest.raises(DamagedFileError, match=r"eval\.json.*move it aside"):
            merge_eval(tmp_path, "clean", {"top1": 1.0}, {})
        assert (tmp_path / "eval.json").read_text() == text  # the sets it may still hold are not dropped
    assert read_json_file(tmp_path / "absent.json", "x", "y") is None


def test_a_damaged_summary_counts_as_incomplete_and_a_damaged_sweep_index_is_rebuilt(tmp_path, caplog):
    for seed in (0, 1):
        job = tmp_path / f"seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        (job / "summary.json").write_text(json.dumps({"status": "completed", "top1": 50.0 + seed}))
    (tmp_path / "seed=1" / "summary.json").write_text('{"status": "compl')
    assert job_status(tmp_path / "seed=1")[0] == "incomplete"  # re-running the sweep resumes it
    assert "seed=1/summary.json is not valid JSON" in caplog.text
    (tmp_path / "sweep.json").write_text('{"jobs": [{"job": "seed=0", "sta')
    index = SweepIndex(tmp_path).refresh()
    assert "sweep.json is not valid JSON" in caplog.text and "rebuilding it" in caplog.text
    assert {j["job"]: j["status"] for j in index["jobs"]} == {"seed=0": "completed", "seed=1": "incomplete"}
    assert json.loads((tmp_path / "sweep.json").read_text())["counts"]["completed"] == 1


def test_a_damaged_run_config_is_named(tmp_path):
    for text, what in [("a: [1,\n", "not valid YAML"), ("", "empty or not a mapping"), ("- 1\n", "mapping")]:
        (tmp_path / "config.yaml").write_text(text)
        with pytest.raises(DamagedFileError, match=what):
            read_config_file(tmp_path / "config.yaml", "the run's config", "restore it")


def test_a_damaged_ffcv_dataset_record_is_named(tmp_path):
    from types import SimpleNamespace

    from data.imagenet_ffcv import ImageNetFFCVDataModule

    (tmp_path / "dataset.json").write_text('{"classes": ["n0144')
    with pytest.raises(DamagedFileError, match=r"dataset\.json is not valid JSON.*write_ffcv\.py"):
        ImageNetFFCVDataModule._check_meta(SimpleNamespace(root=tmp_path), 4, "error")


def test_a_damaged_image_check_cache_is_said_and_the_images_are_checked_again(tmp_path, caplog):
    from PIL import Image

    from data.image_tree import fingerprint, verify_images

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("L", (8, 8)).save(good)
    bad.write_bytes(b"not an image")
    paths = [str(good), str(bad)]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{fingerprint(paths)}.json").write_text('{"files": 2, "bad": [["')
    assert [b.path for b in verify_images(paths, cache_dir=cache)] == [str(bad)]
    assert "image check cache" in caplog.text and "checking the images again" in caplog.text
    assert [b.path for b in verify_images(paths, cache_dir=cache)] == [str(bad)]  # the cache, rewritten


def test_a_short_write_from_torch_or_python_reads_as_a_full_disk():
    torch_short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1500928 vs 15008")
    for error in (torch_short, OSError(errno.ENOSPC, "No space left on device")):
        full = disk_full(error, "/runs/x/last.ckpt")
        assert isinstance(full, DiskFullError) and "disk is full writing /runs/x/last.ckpt" in str(full)
    assert disk_full(RuntimeError("shape mismatch"), "p") is None
    assert disk_full(OSError(errno.EACCES, "denied"), "p") is None


# ------------------------------------------------------------------------------------ a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: room for one checkpoint of the tiny run (1.3 MB), not for the next one beside it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_cleanly_and_the_same_command_resumes_to_the_same_weights(trained, small_disk):
    _, undisturbed = trained
    run_dir = small_disk / "run"
    proc, summary = run_train(run_dir, *RUN, check=False, env=ENV)
    line = one_line_error(proc, "DiskFullError")
    assert "disk is full writing" in line and str(run_dir / "checkpoints" / "last.ckpt") in line
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 2  # the last good one, loadable
    assert summary["status"] == "interrupted"
    assert summary["error"].startswith("DiskFullError: the disk is full")
    assert "DiskFullError: the disk is full" in (run_dir / "train.log").read_text()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # the half-written one is gone
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    proc, summary = run_train(run_dir, *RUN, env=ENV)
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 2
    assert summary["weights_sha256"] == undisturbed["weights_sha256"]


def test_a_json_record_rewritten_on_a_full_disk_stays_whole_and_the_error_names_it(small_disk):
    from mixerlab.run import atomic_write_text

    record = small_disk / "eval.json"
    atomic_write_text(record, json.dumps({"sets": {"clean": {"top1": 50.0}}}))
    (small_disk / "filler").write_bytes(b"\0" * 1_900_000)
    with pytest.raises(DiskFullError, match=r"disk is full writing .*eval\.json"):
        atomic_write_text(record, json.dumps({"sets": {"clean": {"top1": 50.0}, "big": "x" * 400_000}}))
    assert json.loads(record.read_text()) == {"sets": {"clean": {"top1": 50.0}}}
    assert sorted(p.name for p in small_disk.iterdir()) == ["eval.json", "filler"]  # no temporary left


# ------------------------------------------------------------------------------------ kills
# eval.py and report.py spend all but their last second importing, and write only at the end: besides a kill
# at a random moment, each is killed inside a write, with half the new file in the temporary file before the
# rename. argv: MODULE (whose atomic_write_text is replaced) CALL (the write to die in, from 1) SCRIPT ARGS...
KILLED_MID_WRITE = """
import importlib, os, runpy, signal, sys, tempfile
from pathlib import Path

module, call = importlib.import_module(sys.argv[1]), int(sys.argv[2])
real, calls = module.atomic_write_text, []

def half_then_kill(path: Path, text: str) -> None:
    calls.append(path)
    if len(calls) < call:
        return real(path, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.write(fd, text[: len(text) // 2].encode())
    os.kill(os.getpid(), signal.SIGKILL)

module.atomic_write_text = half_then_kill
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def killed_mid_write(module: str, call: int, *args: str) -> None:
    cmd, kwargs = killed_mid_write_command(module, call, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == -9, proc.stderr[-3000:]


def killed_mid_write_command(module: str, call: int, *args: str) -> tuple[list[str], dict]:
    return ([sys.executable, "-c", KILLED_MID_WRITE, module, str(call), *args],
            {"cwd": REPO, "env": {**os.environ, **ENV}})


def test_evals_at_once_two_land_one_killed_mid_write_leaves_eval_json_whole_one_damaged_says_so(trained,
                                                                                                tmp_path):
    """Four eval.py processes at once (one start-up's wait on a machine with the cores): two on one run,
    a third on the same run killed inside its write, a fourth on a copy whose checkpoint is cut to 5 kB."""
    run_dir, _ = trained
    copy, damaged = tmp_path / "run", tmp_path / "damaged"
    shutil.copytree(run_dir, copy)
    shutil.copytree(run_dir, damaged)
    cut(run_dir / "checkpoints" / "last.ckpt", damaged / "checkpoints" / "last.ckpt", 5000)
    args = [str(REPO / "eval.py"), f"run={copy}", "limit=64"]
    cmd, kw = killed_mid_write_command("mixerlab.evaluation", 1, *args, "set_name=killed")
    procs = {name: subprocess.Popen([sys.executable, *args, f"set_name={name}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, **kw) for name in ("first", "second")}
    procs["killed"] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    procs["damaged"] = subprocess.Popen([sys.executable, str(REPO / "eval.py"), f"run={damaged}"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    for name in ("first", "second"):
        assert done[name].returncode == 0, done[name].stderr[-3000:]
    assert done["killed"].returncode == -9, done["killed"].stderr[-3000:]
    sets = json.loads((copy / "eval.json").read_text())["sets"]
    assert {"first", "second"} <= set(sets) and sets["first"]["top1"] == sets["second"]["top1"]
    assert "killed" not in sets and list(copy.glob(".eval.json.*.tmp"))  # its half file, never eval.json
    every_json_parses(copy)
    assert "last.ckpt is truncated" in one_line_error(done["damaged"], "DamagedFileError")


def test_report_killed_inside_a_random_one_of_its_writes_then_rerun_writes_whole_files(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "report"
    args = [str(REPO / "scripts" / "report.py"), str(run_dir), "--out", str(out)]
    seed = random.randrange(1 << 30)
    call = random.Random(seed).randint(1, 3)  # it writes at least report.html, report.md and report.json
    killed_mid_write("mixerlab.run", call, *args)
    assert list(out.rglob(".*.tmp")), f"seed {seed}"
    every_json_parses(out)
    subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, **ENV}, check=True,
                   capture_output=True, timeout=300)
    assert json.loads((out / "report.json").read_text()), f"seed {seed}"
    assert (out / "report.html").read_text().rstrip().endswith("</html>")


def test_a_sweep_killed_mid_job_at_a_random_point_then_rerun_completes(trained, tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "seed=0", *RUN, "sweep.report=false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")} | ENV
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("runs/sweeps/*/*/checkpoints/last.ckpt")) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    seed = random.randrange(1 << 30)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))  # between the first checkpoint and the job's end
    proc.kill()
    assert proc.wait() == -9, f"seed {seed}: the sweep ended before the kill"
    every_json_parses(tmp_path)
    (sweep_dir,) = (tmp_path / "runs" / "sweeps").iterdir()
    assert SweepIndex(sweep_dir).scan()["counts"]["completed"] == 0
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert index["counts"]["completed"] == 1, index
    (summary,) = sweep_dir.glob("*/summary.json")
    summary = json.loads(summary.read_text())
    assert summary.get("resumed_from_step", 0) >= 2, f"seed {seed}"
    assert summary["weights_sha256"] == trained[1]["weights_sha256"]  # the same job as a run never killed
    every_json_parses(tmp_path)


def test_every_json_file_the_project_writes_goes_through_the_atomic_write():
    """A JSON file written in place is half a file to a reader, or after a kill; ``atomic_write_text`` is
    the one way the project writes one (a temporary file then a rename is the other, in data/image_tree)."""
    in_place = []
    for path in REPO.rglob("*.py"):
        if {"tests", ".git", ".venv", "site"} & set(path.relative_to(REPO).parts):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "json.dump(" in line or ('.json"' in line and ".write_text(" in line):
                in_place.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not in_place, "\n".join(in_place)
