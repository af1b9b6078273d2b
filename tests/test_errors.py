"""The project's error types have one home, and every package raises them from there."""

from __future__ import annotations

import ast
from pathlib import Path

from mixerlab import errors

ROOT = Path(__file__).resolve().parents[1]


def test_error_types_are_defined_only_in_mixerlab_errors():
    defined = {}
    for path in ROOT.glob("*/*.py"):
        if path.parts[-2] in ("tests", ".git"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert defined and all(files == ["mixerlab/errors.py"] for files in defined.values()), defined


def test_dataset_errors_are_config_errors():
    assert issubclass(errors.DatasetError, errors.ConfigError)
