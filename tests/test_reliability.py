"""Damaged files, a full disk and kills (docs/reliability.md): each ends in one line naming the file or the
full disk, with no traceback, and nothing already written is lost.

One tiny run (2 epochs of 4 steps, a checkpoint every 2 steps) is trained once; the other tests damage
copies of it, evaluate it, or report it. The same command is also run through a full disk, a kill and a
damaged last.ckpt in turn, and as a sweep killed at a random moment; these runs start together on two
threads (``runs``), as each is a process of its own. The report tests read a sweep written on disk without
training (tests/report_data.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import runpy
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mixerlab.checkpointing import AtomicCheckpointIO, RunCheckpoint, checkpoint_step, resume_point
from mixerlab.errors import ConfigError, DamagedFileError, DiskFullError
from mixerlab.evaluation import merge_eval, read_eval, resolve_run
from mixerlab.pretrained import read_state_dict
from mixerlab.storage import disk_full, load_torch_file, read_config_file, read_json_file
from mixerlab.sweep import SweepIndex, job_status
from tests.conftest import REPO, every_json_parses, run_train

pytestmark = pytest.mark.slow

RUN = ("trainer.max_epochs=2", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2",
       "backbone.depth=2", "callbacks.checkpoint.every_n_steps=2", "~callbacks.progress",
       "+trainer.enable_progress_bar=false")
ENV = {"OMP_NUM_THREADS": "1"}
# SIGKILL at the start of step 7's batch: last.ckpt is step 6's, previous.ckpt the end of epoch 0 (step 4)
KILL_AT_7 = ("+callbacks.kill._target_=tests.faults.KillAt", "+callbacks.kill.step=7")
FALLBACK = "going on from the newest checkpoint that loads"


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


def files_of(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def robustness_section(markdown: str) -> str:
    return markdown.split("## Robustness", 1)[-1].split("\n## ", 1)[0] if "## Robustness" in markdown else ""


@pytest.fixture(scope="module")
def report_main():
    """scripts/report.py's ``main(argv)``, run in this process: what the command does, less its start-up."""
    return runpy.run_path(str(REPO / "scripts" / "report.py"), run_name="report_script")["main"]


# ------------------------------------------------------------------------------------ a small disk
def mount_tmpfs(mount: Path, size: str) -> Path:
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {proc.stderr.strip()}")
    return mount


def unmount(mount: Path) -> None:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write zeros to ``disk/filler`` until the file system refuses: the disk is full."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: room for one checkpoint of the tiny run (1.3 MB), not for the next one beside it."""
    mount = mount_tmpfs(tmp_path / "disk", "2m")
    yield mount
    unmount(mount)


# ------------------------------------------------------------------------------------ the module's runs
def train_undisturbed(run_dir: Path) -> tuple[Path, dict]:
    _, summary = run_train(run_dir, *RUN, env=ENV)
    assert summary["status"] == "completed"
    return run_dir, summary


def run_through_a_full_disk_a_kill_and_a_damaged_checkpoint(mount: Path) -> tuple[Path, dict]:
    """The tiny run's command on a 2 MB disk stops at its second checkpoint (step 4): the disk is full.
    Space freed, the same command (with a SIGKILL at step 7) resumes from step 2 and dies there, leaving
    last.ckpt at step 6 and previous.ckpt at step 4; last.ckpt is then cut to 5 kB, and the same command,
    run once more, passes over it for previous.ckpt and finishes. What each stage left is kept here."""
    mount_tmpfs(mount, "2m")
    run_dir = mount / "run"
    ckpts = run_dir / "checkpoints"
    stage = {}
    try:
        proc, summary = run_train(run_dir, *RUN, check=False, env=ENV)
        stage["full"] = SimpleNamespace(proc=proc, summary=summary,
                                        last_step=checkpoint_step(ckpts / "last.ckpt"),
                                        files=sorted(p.name for p in ckpts.iterdir()),
                                        log=(run_dir / "train.log").read_text())
        remount(mount, "64m")  # space freed
        proc, _ = run_train(run_dir, *RUN, *KILL_AT_7, check=False, env=ENV)
        stage["killed"] = SimpleNamespace(proc=proc, log=(run_dir / "train.log").read_text(), steps=(
            checkpoint_step(ckpts / "last.ckpt"), checkpoint_step(ckpts / "previous.ckpt")))
        stage["cut"] = cut(ckpts / "last.ckpt", ckpts / "last.ckpt", 5000).read_bytes()
        proc, summary = run_train(run_dir, *RUN, check=False, env=ENV)
        kept = ckpts / "last.ckpt.damaged"
        stage["done"] = SimpleNamespace(proc=proc, summary=summary, log=(run_dir / "train.log").read_text(),
                                        files=sorted(p.name for p in ckpts.iterdir()),
                                        kept=kept.read_bytes() if kept.is_file() else None,
                                        last_step=checkpoint_step(ckpts / "last.ckpt"))
        return run_dir, stage
    finally:
        unmount(mount)


def sweep_killed_at_a_random_point_then_rerun(cwd: Path) -> SimpleNamespace:
    """``train.py -m seed=0 ...`` SIGKILLed at a random moment between its first checkpoint and the job's
    end, then the same command again. A JSON file left half-written by the kill fails this at once.

    The moment is drawn in steps, not seconds, so that it falls inside the job at any machine speed: a
    random one of the first six periodic checkpoints (steps 5-30 of 44), then up to 50 ms more."""
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "seed=0", *RUN, "sweep.report=false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")} | ENV
    seed = random.randrange(1 << 30)
    draw = random.Random(seed)
    checkpoints, delay = draw.randint(1, 6), draw.uniform(0.0, 0.05)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    seen: set[int] = set()
    while len(seen) < checkpoints and proc.poll() is None and time.monotonic() < deadline:
        for last in cwd.glob("runs/sweeps/*/*/checkpoints/last.ckpt"):
            with contextlib.suppress(FileNotFoundError):
                seen.add(last.stat().st_mtime_ns)  # each periodic save replaces the file: a new mtime
        time.sleep(0.005)
    time.sleep(delay)
    proc.kill()
    outcome = SimpleNamespace(seed=seed, killed=proc.wait(), cwd=cwd)
    if outcome.killed != -9:
        return outcome
    every_json_parses(cwd)
    (outcome.sweep_dir,) = (cwd / "runs" / "sweeps").iterdir()
    outcome.completed_after_kill = SweepIndex(outcome.sweep_dir).scan()["counts"]["completed"]
    outcome.rerun = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return outcome


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Future]:
    """The module's training runs, started together on two threads: each run is a process of its own, so
    two of them share the machine's cores while the tests that need neither go on. A test waits only for
    the one it reads (``runs[name].result()``)."""
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {
        "trained": pool.submit(train_undisturbed, tmp_path_factory.mktemp("trained") / "run"),
        "full_disk": pool.submit(run_through_a_full_disk_a_kill_and_a_damaged_checkpoint,
                                 tmp_path_factory.mktemp("full_disk") / "disk"),
        "sweep": pool.submit(sweep_killed_at_a_random_point_then_rerun, tmp_path_factory.mktemp("sweep")),
    }
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def trained(runs) -> tuple[Path, dict]:
    """The tiny run, undisturbed: the weights every resumed run must end with."""
    return runs["trained"].result()


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


def test_a_cut_empty_or_foreign_safetensors_file_is_a_one_line_config_error_naming_it(tmp_path):
    from safetensors.torch import save_file

    whole = tmp_path / "deit.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.randn(256, 256)}, str(whole))
    torch.save({"w": torch.randn(8)}, tmp_path / "torch.safetensors")  # a torch file under this name
    cases = {cut(whole, tmp_path / "part.safetensors", 100_000): "100,000 bytes",
             cut(whole, tmp_path / "empty.safetensors", 0): "0 bytes",
             tmp_path / "torch.safetensors": "bytes"}
    for path, size in cases.items():
        with pytest.raises(ConfigError) as info:  # train.py and eval.py print a ConfigError's line alone
            read_state_dict(path)
        message = str(info.value)
        assert isinstance(info.value, DamagedFileError) and "\n" not in message
        assert f"{path} is truncated, empty or not a safetensors file" in message and size in message
        assert "download or copy it again" in message
    assert read_state_dict(whole)[0]["blocks.0.attn.qkv.weight"].shape == (256, 256)


def test_a_damaged_run_checkpoint_is_named_before_resume(trained, tmp_path):
    run_dir, _ = trained
    damaged = cut(run_dir / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt", 5000)
    with pytest.raises(DamagedFileError, match=r"run checkpoint: .*last\.ckpt is truncated.*move it aside"):
        checkpoint_step(damaged)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 8


def test_resume_takes_the_newest_checkpoint_that_loads_and_names_every_damaged_one(trained, tmp_path, caplog):
    run_dir, _ = trained
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    shutil.copytree(run_dir / "checkpoints", ckpts)
    shutil.copy2(run_dir / "config.yaml", run / "config.yaml")
    assert resume_point(ckpts).path == ckpts / "last.ckpt" and not resume_point(ckpts).passed_over
    cut(run_dir / "checkpoints" / "last.ckpt", ckpts / "last.ckpt", 5000)
    point = resume_point(ckpts)
    assert point.path == ckpts / "previous.ckpt" and point.step == 8
    line = point.fallback_line()
    assert "\n" not in line
    assert f"{ckpts / 'last.ckpt'} is truncated or not a torch file (5,000 bytes)" in line
    assert f"{FALLBACK}, {ckpts / 'previous.ckpt'} (step 8)" in line
    # eval.py run=DIR reads the run's checkpoint the same way and says so in the same line
    assert resolve_run(str(run)) == (run.resolve(), (ckpts / "previous.ckpt").resolve())
    assert [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()] == [line]
    cut(run_dir / "checkpoints" / "previous.ckpt", ckpts / "previous.ckpt", 0)
    for read in (resume_point, lambda c: resolve_run(str(c.parent))):
        with pytest.raises(DamagedFileError) as info:
            read(ckpts)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"run checkpoint: {ckpts / 'last.ckpt'} is truncated")
        assert f"and {ckpts / 'previous.ckpt'} is empty (0 bytes)" in message
    assert resume_point(tmp_path / "none") is None


def test_each_save_keeps_the_checkpoint_it_replaces_unless_told_not_to(tmp_path, monkeypatch):
    """``keep_previous``: previous.ckpt is the file the last save replaced, taken only once the new one is
    whole (a save that fails changes neither); off, the run keeps last.ckpt alone. Without hard links (some
    network file systems), the replaced file is renamed instead."""
    io = AtomicCheckpointIO()

    def saves(callback: RunCheckpoint, steps) -> None:
        for step in steps:
            def save_checkpoint(path, weights_only, storage_options, step=step):
                io.save_checkpoint({"global_step": step}, path, storage_options)
            trainer = SimpleNamespace(is_global_zero=True, global_step=step, save_checkpoint=save_checkpoint)
            callback.save(trainer)

    kept = RunCheckpoint(tmp_path / "kept", keep_previous=True)
    saves(kept, [1])
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["last.ckpt"]
    saves(kept, [2, 3])
    assert (checkpoint_step(kept.last_path), checkpoint_step(kept.previous_path)) == (3, 2)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["last.ckpt", "previous.ckpt"]

    def torn_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(DiskFullError):
        saves(kept, [4])
    monkeypatch.undo()
    assert (checkpoint_step(kept.last_path), checkpoint_step(kept.previous_path)) == (3, 2)

    def no_hard_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    saves(kept, [5])
    assert (checkpoint_step(kept.last_path), checkpoint_step(kept.previous_path)) == (5, 3)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["last.ckpt", "previous.ckpt"]
    monkeypatch.undo()

    alone = RunCheckpoint(tmp_path / "alone", keep_previous=False)
    saves(alone, [1, 2])
    assert sorted(p.name for p in (tmp_path / "alone").iterdir()) == ["last.ckpt"]


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


def test_the_report_leaves_out_a_damaged_eval_json_and_erf_json_saying_so_once_each(tmp_path, caplog,
                                                                                     report_main):
    """The report can do without either file (they feed its robustness table and ERF gallery): each is said
    in one warning line naming it, that run's sets or maps are left out, the report is written, and the
    damaged files are left as they were. The same files whole bring the run back into both sections."""
    from PIL import Image

    from mixerlab.report import SweepReport
    from mixerlab.report.robustness import erf_gallery_html, robustness_markdown
    from tests.report_data import make_sweep

    sweep = make_sweep(tmp_path)
    png = tmp_path / "layer0.png"
    Image.new("RGB", (20, 20), (200, 40, 40)).save(png)
    whole_erf = json.dumps({"layers": [0], "files": {"0": "layer0.png"}, "centre_patch_share": {"0": 0.5}})
    for job, clean in (("mixer=attention,seed=0", 91.0), ("mixer=pooling,seed=0", 92.5)):
        (sweep / job / "eval.json").write_text(json.dumps({"sets": {"clean": {"top1": clean}}}))
        (sweep / job / "erf").mkdir()
        (sweep / job / "erf" / "layer0.png").write_bytes(png.read_bytes())
        (sweep / job / "erf" / "erf.json").write_text(whole_erf)
    damaged_run = sweep / "mixer=attention,seed=0"
    (damaged_run / "eval.json").write_text('{"sets": {"clean": {"top1": 9')
    (damaged_run / "erf" / "erf.json").write_text("")
    damaged = files_of(damaged_run)
    out = tmp_path / "report"

    assert report_main([str(sweep), "--out", str(out)]) == 0  # no exception: no traceback
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    (about_eval,) = [m for m in said if "eval.json" in m]
    assert about_eval.startswith(f"evaluation record {damaged_run / 'eval.json'} is not valid JSON ")
    assert about_eval.endswith("; its sets are left out of the report; move it aside and run eval.py "
                               "again for each set") and "\n" not in about_eval
    assert [m for m in said if "erf.json" in m] == [
        f"ERF record {damaged_run / 'erf' / 'erf.json'} is empty; its maps are left out of the report; run "
        "eval.py erf.layers=[...] again"]
    page, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert 'id="robustness"' in page and "| mixer=pooling | 92.50 |" in robustness_section(md)
    assert "| mixer=attention |" not in robustness_section(md)  # the damaged run's set is left out
    assert page.count('class="erf-row"') == 1 and 'data-config="mixer=pooling"' in page
    assert files_of(damaged_run) == damaged  # read, never rewritten

    (damaged_run / "eval.json").write_text(json.dumps({"sets": {"clean": {"top1": 91.0}}}))
    (damaged_run / "erf" / "erf.json").write_text(whole_erf)
    groups = SweepReport([sweep]).groups  # the two sections alone: the plots would take seconds more
    assert "| mixer=attention | 91.00 |" in "\n".join(robustness_markdown(groups))
    assert erf_gallery_html(groups).count('class="erf-row"') == 2


def test_a_short_write_from_torch_or_python_reads_as_a_full_disk():
    torch_short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1500928 vs 15008")
    for error in (torch_short, OSError(errno.ENOSPC, "No space left on device")):
        full = disk_full(error, "/runs/x/last.ckpt")
        assert isinstance(full, DiskFullError) and "disk is full writing /runs/x/last.ckpt" in str(full)
    assert disk_full(RuntimeError("shape mismatch"), "p") is None
    assert disk_full(OSError(errno.EACCES, "denied"), "p") is None


# ------------------------------------------------------------- a full disk, a damaged last.ckpt
@pytest.fixture(scope="module")
def full_disk_kill_and_damage(runs) -> tuple[Path, dict]:
    return runs["full_disk"].result()


def test_a_full_disk_stops_cleanly_and_the_same_command_resumes_to_the_same_weights(trained,
                                                                                    full_disk_kill_and_damage):
    _, undisturbed = trained
    run_dir, stage = full_disk_kill_and_damage
    full = stage["full"]
    line = one_line_error(full.proc, "DiskFullError")
    assert "disk is full writing" in line and str(run_dir / "checkpoints" / "last.ckpt") in line
    assert full.last_step == 2  # the last good one, loadable
    assert full.summary["status"] == "interrupted"
    assert full.summary["error"].startswith("DiskFullError: the disk is full")
    assert "DiskFullError: the disk is full" in full.log
    assert not [name for name in full.files if name.endswith(".tmp")]  # the half-written one is gone
    assert full.files == ["last.ckpt"]  # a save that failed kept no previous.ckpt either
    # space freed, the same command resumes from the last good checkpoint (killed at step 7 on the way)
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'} (step 2)" in stage["killed"].log
    done = stage["done"].summary
    assert done["status"] == "completed"
    assert done["weights_sha256"] == undisturbed["weights_sha256"]


def test_a_damaged_last_checkpoint_is_passed_over_for_the_previous_one_and_the_run_ends_the_same(
        trained, full_disk_kill_and_damage):
    _, undisturbed = trained
    run_dir, stage = full_disk_kill_and_damage
    last, previous = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "previous.ckpt"
    assert stage["killed"].proc.returncode == -signal.SIGKILL, stage["killed"].proc.stderr[-3000:]
    assert stage["killed"].steps == (6, 4)  # last.ckpt mid-epoch 1, previous.ckpt the end of epoch 0
    done = stage["done"]
    assert done.proc.returncode == 0, done.proc.stderr[-3000:]
    assert done.summary["status"] == "completed" and done.summary["resumed_from_step"] == 4
    assert done.summary["weights_sha256"] == undisturbed["weights_sha256"]
    why = f"{last} is truncated or not a torch file (5,000 bytes)"
    assert done.summary["resume_passed_over"] == [why]
    for output in (done.proc.stdout + done.proc.stderr, done.log):  # the console and train.log
        (said,) = [line for line in output.splitlines() if FALLBACK in line]
        assert said.endswith(f"run checkpoint: {why}; {FALLBACK}, {previous} (step 4)")
    assert done.kept == stage["cut"]  # set aside at the run's first save, never overwritten
    assert done.files == ["last.ckpt", "last.ckpt.damaged", "previous.ckpt"] and done.last_step == 8


def test_a_json_record_rewritten_on_a_full_disk_stays_whole_and_the_error_names_it(small_disk):
    from mixerlab.run import atomic_write_text

    record = small_disk / "eval.json"
    atomic_write_text(record, json.dumps({"sets": {"clean": {"top1": 50.0}}}))
    (small_disk / "filler").write_bytes(b"\0" * 1_900_000)
    with pytest.raises(DiskFullError, match=r"disk is full writing .*eval\.json"):
        atomic_write_text(record, json.dumps({"sets": {"clean": {"top1": 50.0}, "big": "x" * 400_000}}))
    assert json.loads(record.read_text()) == {"sets": {"clean": {"top1": 50.0}}}
    assert sorted(p.name for p in small_disk.iterdir()) == ["eval.json", "filler"]  # no temporary left


def test_eval_on_a_full_disk_says_so_in_one_line_keeps_eval_json_and_the_same_command_completes(trained,
                                                                                                 small_disk):
    run_dir, _ = trained
    run = small_disk / "run"
    for name in ("config.yaml", "summary.json", "checkpoints/last.ckpt"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / name, run / name)
    earlier = json.dumps({"sets": {"clean": {"top1": 50.0, "images": 64}}}, indent=2) + "\n"
    (run / "eval.json").write_text(earlier)
    filler = fill(small_disk)
    command = ("eval.py", f"run={run}", "limit=64", "set_name=later")
    line = one_line_error(run_script(*command), "DiskFullError")
    assert line.startswith(f"DiskFullError: the disk is full writing {run / 'eval.json'}: free space there")
    assert (run / "eval.json").read_text() == earlier
    assert not [p.name for p in run.iterdir() if p.name.startswith(".eval.json")]  # no temporary left
    filler.unlink()  # space freed
    run_script(*command, check=True)
    sets = json.loads((run / "eval.json").read_text())["sets"]
    assert sets["clean"] == {"top1": 50.0, "images": 64} and sets["later"]["images"] == 64


def test_the_report_on_a_full_disk_says_so_in_one_line_keeps_the_earlier_report_and_completes_once_freed(
        tmp_path, small_disk, report_main):
    from tests.report_data import make_sweep

    sweep = make_sweep(tmp_path)
    out = small_disk / "report"
    argv = [str(sweep), "--out", str(out)]
    assert report_main(argv) == 0
    earlier = files_of(out)
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in earlier}
    filler = fill(small_disk)
    with pytest.raises(SystemExit) as info:  # scripts/report.py's one line, as the interpreter prints it
        report_main(argv)
    line = str(info.value.code)
    assert line.startswith(f"DiskFullError: the disk is full writing {out}/") and "\n" not in line
    assert files_of(out) == earlier  # not one file truncated, no temporary file left
    filler.unlink()  # space freed
    assert report_main(argv) == 0
    assert (out / "report.html").read_text().rstrip().endswith("</html>")
    assert json.loads((out / "report.json").read_text())


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


def test_evals_at_once_two_land_one_killed_mid_write_leaves_eval_json_whole_damaged_ones_say_so(trained,
                                                                                                tmp_path):
    """Five eval.py processes at once (one start-up's wait on a machine with the cores): two on one run,
    a third on the same run killed inside its write, a fourth on a copy whose last.ckpt is cut to 5 kB
    (it goes on from previous.ckpt and says so), a fifth on a copy with both checkpoints cut."""
    run_dir, _ = trained
    copy, fallback, damaged = tmp_path / "run", tmp_path / "fallback", tmp_path / "damaged"
    for target in (copy, fallback, damaged):
        shutil.copytree(run_dir, target)
    for name in ("last.ckpt", "previous.ckpt"):
        cut(run_dir / "checkpoints" / name, damaged / "checkpoints" / name, 5000)
    cut_last = cut(run_dir / "checkpoints" / "last.ckpt", fallback / "checkpoints" / "last.ckpt", 5000)
    args = [str(REPO / "eval.py"), f"run={copy}", "limit=64"]
    cmd, kw = killed_mid_write_command("mixerlab.evaluation", 1, *args, "set_name=killed")
    procs = {name: subprocess.Popen([sys.executable, *args, f"set_name={name}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, **kw) for name in ("first", "second")}
    procs["killed"] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    for name, run in (("fallback", fallback), ("damaged", damaged)):
        procs[name] = subprocess.Popen([sys.executable, str(REPO / "eval.py"), f"run={run}", "limit=64"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    for name in ("first", "second", "fallback"):
        assert done[name].returncode == 0, done[name].stderr[-3000:]
    assert done["killed"].returncode == -9, done["killed"].stderr[-3000:]
    sets = json.loads((copy / "eval.json").read_text())["sets"]
    assert {"first", "second"} <= set(sets) and sets["first"]["top1"] == sets["second"]["top1"]
    assert "killed" not in sets and list(copy.glob(".eval.json.*.tmp"))  # its half file, never eval.json
    every_json_parses(copy)
    ckpts = fallback / "checkpoints"
    (said,) = [line for line in done["fallback"].stdout.splitlines() if FALLBACK in line]
    assert said.endswith(f"run checkpoint: {ckpts / 'last.ckpt'} is truncated or not a torch file "
                         f"(5,000 bytes); {FALLBACK}, {ckpts / 'previous.ckpt'} (step 8)")
    record = json.loads((fallback / "eval.json").read_text())
    assert record["checkpoint"] == str(ckpts / "previous.ckpt") and record["step"] == 8
    assert record["sets"]["clean"]["top1"] == sets["first"]["top1"]  # the same weights: step 8 both
    assert (ckpts / "last.ckpt").read_bytes() == cut_last.read_bytes()  # eval.py reads a run, never moves it
    line = one_line_error(done["damaged"], "DamagedFileError")
    assert "last.ckpt is truncated" in line and "previous.ckpt is truncated" in line


def test_report_killed_inside_a_random_one_of_its_writes_then_rerun_writes_whole_files(trained, tmp_path,
                                                                                       report_main):
    run_dir, _ = trained
    out = tmp_path / "report"
    args = [str(REPO / "scripts" / "report.py"), str(run_dir), "--out", str(out)]
    seed = random.randrange(1 << 30)
    call = random.Random(seed).randint(1, 3)  # it writes at least report.html, report.md and report.json
    killed_mid_write("mixerlab.run", call, *args)
    assert list(out.rglob(".*.tmp")), f"seed {seed}"
    every_json_parses(out)
    assert report_main(args[1:]) == 0  # the same command again
    assert json.loads((out / "report.json").read_text()), f"seed {seed}"
    assert (out / "report.html").read_text().rstrip().endswith("</html>")


def test_a_sweep_killed_mid_job_at_a_random_point_then_rerun_completes(trained, runs):
    sweep = runs["sweep"].result()
    seed = sweep.seed
    assert sweep.killed == -9, f"seed {seed}: the sweep ended before the kill"
    assert sweep.completed_after_kill == 0  # and every JSON file parsed after the kill
    done = sweep.rerun
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    index = json.loads((sweep.sweep_dir / "sweep.json").read_text())
    assert index["counts"]["completed"] == 1, index
    (summary,) = sweep.sweep_dir.glob("*/summary.json")
    summary = json.loads(summary.read_text())
    assert summary.get("resumed_from_step", 0) >= 2, f"seed {seed}"
    assert summary["weights_sha256"] == trained[1]["weights_sha256"]  # the same job as a run never killed
    every_json_parses(sweep.cwd)


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
