"""Shared test helpers: compose configs in-process, or run ``train.py`` as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_train(
    run_dir: Path,
    *overrides: str,
    check: bool = True,
    timeout: int = 600,
    env: dict | None = None,
    script: str = "train.py",
) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run ``python train.py hydra.run.dir=<run_dir> <overrides>``; return the process and summary.json."""
    cmd = [sys.executable, str(REPO / script), f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return proc, summary


def tiny_vit(mixer=None, **overrides):
    """A 16x16 one-channel ViT, 32 wide and 2 deep, attention with 2 heads unless ``mixer`` (a factory) is
    given: the small model that unit tests build by hand. ``overrides`` go to the VisionTransformer."""
    from mixerlab.backbone import VisionTransformer
    from mixers.attention import Attention

    kwargs = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
    return VisionTransformer(mixer or (lambda **kw: Attention(num_heads=2, **kw)), **{**kwargs, **overrides})


@pytest.fixture
def train_run(tmp_path):
    """``train_run(*overrides)`` -> (process, summary) in a fresh run directory under tmp_path."""
    counter = iter(range(1000))

    def _run(*overrides: str, **kwargs):
        return run_train(tmp_path / f"run{next(counter)}", *overrides, **kwargs)

    return _run


def kill_sweep_when(cmd: list[str], cwd: Path, env: dict, ready: Callable[[], bool],
                    timeout: float = 300) -> str:
    """Start ``cmd`` (a sweep) in a session of its own, wait until ``ready()``, then SIGKILL the session's
    process group: the sweep and every job process it started die at once, as in ``kill -9 -PGID`` or a
    machine's crash, and nothing runs on the way out. Returns the sweep's output; fails if it ended, or
    ``timeout`` passed, before it was ready."""
    log = cwd / "killed_sweep.out"  # a file, not a pipe: an unread pipe would stall the sweep when full
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    output = log.read_text()
    assert proc.returncode == -signal.SIGKILL and ready(), f"ended or never got ready:\n{output[-4000:]}"
    return output


def every_json_parses(root: Path) -> list[Path]:
    """Every JSON file under ``root`` (temporary files excepted) parses: none is half-written."""
    files = [p for p in root.rglob("*.json") if not p.name.startswith(".")]
    for path in files:
        json.loads(path.read_text())
    return files
