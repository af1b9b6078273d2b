"""Every mixer learns the embedded digits through ``python train.py -m mixer=...`` (one short multirun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIXERS = [
    "attention",
    "feedforward",
    "spectral",
    "fibottention",
    "pooling",
    "identity",
    "random",
    "fnet",
    "afno",
    "xca",
]
EPOCHS = 5  # the default budget is 30; five epochs already put every mixer well above chance (10%)


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict]:
    """Two multiruns of half the mixers each, side by side: each trains on one intra-op thread (these models
    are tiny, and extra threads only contend on a shared CI machine), so the two use both cores."""
    procs = []
    for half in (MIXERS[0::2], MIXERS[1::2]):
        sweep = tmp_path_factory.mktemp("learning")
        cmd = [
            sys.executable,
            "train.py",
            "-m",
            f"mixer={','.join(half)}",
            f"trainer.max_epochs={EPOCHS}",
            "recipe.warmup_epochs=0.5",
            f"trainer.check_val_every_n_epoch={EPOCHS}",
            f"hydra.sweep.dir={sweep}",
            "~callbacks.progress",
            "+trainer.enable_progress_bar=false",
        ]
        log = (sweep.parent / f"{sweep.name}.log").open("w")  # a file, not a pipe: neither can fill and block
        procs.append((sweep, log, subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "OMP_NUM_THREADS": "1"})))
    found = []
    for sweep, log, proc in procs:
        proc.wait(timeout=900)
        log.close()
        assert proc.returncode == 0, Path(log.name).read_text()[-6000:]
        found += [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    return {s["mixer"]: s for s in found}


@pytest.mark.slow
@pytest.mark.parametrize("mixer", MIXERS)
def test_mixer_learns_digits_well_above_chance(summaries, mixer):
    summary = summaries[mixer]
    assert summary["status"] == "completed" and summary["epochs"] == EPOCHS
    assert summary["top1"] >= 25.0, f"{mixer}: top-1 {summary['top1']}% after {EPOCHS} epochs (chance: 10%)"
