"""Ladder fixtures: a models folder as a fresh install leaves it (the demo's ladder made and
measured, once per session), and an isolated FATHOM_HOME per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_ladder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo and its measured ladder, made exactly as the app's first start makes them."""
    from fathom_desktop.demo import demo_ladder_work, ensure_demo_model
    from fathom_desktop.level_jobs import LevelWorker

    folder = tmp_path_factory.mktemp("models")
    ensure_demo_model(directory=folder)
    work = demo_ladder_work(folder)
    assert work is not None
    outcome = LevelWorker(work).run()
    assert outcome.status == "done", outcome.message
    return folder


@pytest.fixture(autouse=True)
def fathom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fathom-home"
    monkeypatch.setenv("FATHOM_HOME", str(home))
    return home


def copy_of(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target, dirs_exist_ok=True)
    return target
