"""The repo is used from its root: installing it puts no bare `data`/`mixers` package in site-packages."""

from __future__ import annotations

import importlib.util
import site
import sysconfig
from pathlib import Path

from tests.conftest import REPO


def test_project_packages_resolve_to_the_repo_not_site_packages():
    for name in ("data", "mixers", "mixerlab"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).resolve().is_relative_to(REPO), (name, spec)
    dirs = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    for d in dirs:
        for name in ("data", "mixers", "mixerlab"):
            assert not (Path(d) / name / "__init__.py").exists(), f"{name} installed into {d}"
