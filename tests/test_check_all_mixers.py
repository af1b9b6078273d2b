"""scripts/check_all_mixers.py: one multirun over every conf/mixer/*.yaml on the default dataset completes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mixerlab.build import CONF_DIR
from scripts.check_all_mixers import REPO, command, discover_mixers


def test_the_mixer_list_is_discovered_from_the_config_group(tmp_path):
    mixers = sorted(p.stem for p in (CONF_DIR / "mixer").glob("*.yaml"))
    assert discover_mixers() == mixers and "attention" in mixers
    assert command(mixers, tmp_path, [])[2:4] == ["-m", "mixer=" + ",".join(mixers)]


@pytest.mark.slow
def test_every_mixer_completes_a_tiny_multirun(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/check_all_mixers.py", "--out", str(tmp_path / "sweep")],
        cwd=REPO, capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    n = len(discover_mixers())
    assert f"{n}/{n} mixers completed" in proc.stdout
