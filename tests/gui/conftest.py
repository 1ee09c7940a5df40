"""GUI fixtures: an isolated FATHOM_HOME per test, and chat windows driven by the fake engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "gui"
WAIT_MS = 15_000


@pytest.fixture(autouse=True)
def fathom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every GUI test gets its own settings, history and models folders."""
    home = tmp_path / "fathom-home"
    monkeypatch.setenv("FATHOM_HOME", str(home))
    return home


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def write_fake_gguf(path: Path) -> Path:
    """Enough of a GGUF for the fake engine (it checks the magic, as the real one checks more)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + bytes(60))
    return path


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    return write_fake_gguf(tmp_path / "models" / "fathom-r1-14b.Q4_K_M.gguf")


@pytest.fixture
def make_window(qtbot, tmp_path: Path, fake_gguf: Path) -> Iterator[Callable[..., object]]:
    """make_window(engine=None, settings=None, history_path=None, load=True) -> MainWindow."""
    from fathom_desktop.engine.scripted import FakeEngine
    from fathom_desktop.gui.main_window import MainWindow
    from fathom_desktop.gui.session_types import SessionState
    from fathom_desktop.history import History
    from fathom_desktop.settings import SettingsStore

    made: list[tuple[MainWindow, History]] = []

    def make(
        engine: object | None = None,
        settings: dict[str, object] | None = None,
        history_path: Path | None = None,
        load: bool = True,
    ) -> MainWindow:
        engine = engine if engine is not None else FakeEngine(tokens_per_s=None)
        store = SettingsStore(tmp_path / "settings.json")
        store.update({"model_path": str(fake_gguf), **(settings or {})})
        history = History(history_path or tmp_path / "history.sqlite3")
        window = MainWindow(lambda: engine, store, history)
        window.engine = engine  # for the tests' eyes only
        qtbot.addWidget(window)
        window.resize(1000, 720)
        window.show()
        made.append((window, history))
        if load:
            window.load_model()
            qtbot.waitUntil(lambda: window.session.state is SessionState.READY, timeout=WAIT_MS)
        return window

    yield make
    for window, history in made:
        window.shutdown()
        history.close()


def wait_idle(qtbot, window) -> None:
    from fathom_desktop.gui.session_types import SessionState

    qtbot.waitUntil(lambda: window.session.state is SessionState.READY, timeout=WAIT_MS)


def screenshot(widget, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    assert widget.grab().save(str(path)), f"could not save {path}"
    return path


def cuda_backend(monkeypatch, archs: tuple[int, ...] = (890,)) -> None:
    """Make the window see a CUDA build of llama.cpp that can use a modern GPU (this machine's own
    build is the CPU one); the window asks a child process, so the answer is stood in for."""
    from fathom_desktop.engine.backend_probe import BackendFacts
    from fathom_desktop.gui import model_list

    facts = BackendFacts(None, version="test", archs=archs, runtime_version=13000, gpu_offload=True)
    monkeypatch.setattr(model_list, "backend_facts", lambda: facts)
