"""Shared test helpers: compose configs in-process, or run ``train.py`` as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
