"""The project's error types have one home, and every package raises them from there."""

from __future__ import annotations

import re
from pathlib import Path

from mixerlab import errors

ROOT = Path(__file__).resolve().parents[1]


def test_error_types_are_defined_only_in_mixerlab_errors():
    defined = {}
    for path in ROOT.glob("*/*.py"):
        if path.parts[-2] in ("tests", ".git"):
            continue
        for name in re.findall(r"^class (\w+Error)\b", path.read_text(), flags=re.M):
            defined.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert defined and all(files == ["mixerlab/errors.py"] for files in defined.values()), defined


def test_dataset_errors_are_config_errors():
    assert issubclass(errors.DatasetError, errors.ConfigError)
