"""Packaging fixtures: import the build scripts from packaging/, which is not a Python package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGING_DIR = PROJECT_ROOT / "packaging"
if str(PACKAGING_DIR) not in sys.path:
    sys.path.insert(0, str(PACKAGING_DIR))


def load_build_script() -> ModuleType:
    """packaging/build.py under a name of its own: `build` is also a PyPI package."""
    name = "fathom_packaging_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PACKAGING_DIR / "build.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(autouse=True)
def fathom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every packaging test away from the real user folders."""
    home = tmp_path / "fathom-home"
    monkeypatch.setenv("FATHOM_HOME", str(home))
    return home
