"""`make run` with no model configured: the embedded demo model is made ready, then loaded.

The demo checkpoint's conversion is replaced by a stand-in that returns the tiny GGUF fixture
(trained for 4,096 tokens, like fathom-tiny), so these tests need neither the shipped
checkpoint nor the seconds its conversion takes; the fallback tests use the real
ensure_demo_model on a copy of the app with no demo resources.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from convert.errors import ConversionError
from fathom_desktop import demo
from fathom_desktop.app import DemoStart, start_model
from fathom_desktop.gui.banner import BannerKind
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import MessageStatus
from tests.gui.conftest import WAIT_MS, wait_idle

LOAD_MS = 60_000  # a real llama.cpp load on a busy 2-core box


class StandInDemo:
    """ensure_demo_model's stand-in: reports progress, then waits to be let go."""

    def __init__(self, gguf: Path) -> None:
        self.gguf = gguf
        self.release = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self, progress=None, **_kwargs) -> Path:
        self.threads.append(threading.current_thread())
        progress.start("Converting fathom-tiny", 100)
        progress.advance(40)
        progress.finish()
        assert self.release.wait(WAIT_MS / 1000)
        return self.gguf


@pytest.fixture
def stand_in(monkeypatch, tiny_gguf_f32: Path) -> Iterator[StandInDemo]:
    fake = StandInDemo(tiny_gguf_f32)
    monkeypatch.setattr(demo, "ensure_demo_model", fake)
    yield fake
    fake.release.set()  # a failed test must not leave the job's thread waiting


@pytest.fixture(autouse=True)
def start(make_window) -> Iterator[Callable[..., object]]:
    """start_model as main() calls it, with main()'s clean-up: stop the demo job at exit."""
    started: list[DemoStart] = []

    def run(window):
        result = start_model(window, window.store, None)
        if isinstance(result, DemoStart):
            started.append(result)
        return result

    yield run
    for job in started:
        job.stop()


@pytest.fixture
def real_window(make_window):
    from fathom_desktop.engine import LlamaEngine

    # The app's defaults (16,384-token context) with no model of the user's own.
    return make_window(LlamaEngine(), settings={"model_path": None, "max_tokens": 12}, load=False)


def test_no_model_configured_loads_the_demo_model(start, real_window, qtbot, stand_in, tmp_path):
    window = real_window
    started = start(window)
    assert isinstance(started, DemoStart)

    # While the demo is made, the window stays responsive and says what it is doing.
    qtbot.waitUntil(lambda: "100%" in window.model_label.text(), timeout=WAIT_MS)
    assert window.model_label.text().startswith("Preparing the demo model…")
    assert window.busy.isVisible()
    assert window.session.state is SessionState.NO_MODEL  # nothing to send to yet
    assert stand_in.threads and stand_in.threads[0] is not threading.main_thread()

    stand_in.release.set()
    qtbot.waitUntil(lambda: window.session.state is not SessionState.NO_MODEL, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.session.state is not SessionState.LOADING, timeout=LOAD_MS)
    assert window.session.state is SessionState.READY, window.banner.text()
    assert window.session.report.model_path == stand_in.gguf
    assert not window.busy.isVisible()
    # The default 16k context is more than the demo was trained for: capped, and the user told.
    assert window.session.report.n_ctx == 4096
    assert "Context capped at 4,096 tokens" in window.banner.text()
    assert window.banner.kind is BannerKind.NOTE  # an adjustment, not a failure
    assert window.meter.usage.n_ctx == 4096

    window.session.send("Hello")
    wait_idle(qtbot, window)
    (_, reply) = window.session.history.messages(window.session.conversation_id)
    assert reply.status is MessageStatus.COMPLETE and reply.stats["prompt_tokens"] > 0

    # The demo is not made the user's own choice: nothing saved, model_path still unset.
    assert window.store.get("model_path") is None
    assert not (tmp_path / "settings.json").exists()


def test_a_model_of_your_own_is_used_instead_of_the_demo(start, make_window, qtbot, monkeypatch):
    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the demo was prepared although a model is configured")

    monkeypatch.setattr(demo, "ensure_demo_model", must_not_run)
    window = make_window(load=False)  # settings name the fake GGUF
    assert start(window) is None
    wait_idle(qtbot, window)
    assert window.session.report.model_path.name == "fathom-r1-14b.Q4_K_M.gguf"


def test_a_model_chosen_while_the_demo_is_made_is_kept(
    start, make_window, qtbot, stand_in, fake_gguf, monkeypatch
):
    window = make_window(settings={"model_path": None}, load=False)
    started = start(window)
    window.store.set("model_path", str(fake_gguf))  # File › Settings, meanwhile
    window.load_model()
    wait_idle(qtbot, window)
    stand_in.release.set()
    qtbot.waitUntil(lambda: not started.running(), timeout=WAIT_MS)
    qtbot.wait(100)  # let a wrongly queued demo load show itself
    assert window.session.state is SessionState.READY
    assert window.session.report.model_path == fake_gguf


def test_without_demo_resources_the_first_run_dialog_says_why(
    start, make_window, qtbot, monkeypatch, tmp_path
):
    # The real first-run conversion, in a copy of the app shipped without its demo checkpoint.
    monkeypatch.setattr(demo, "resources_dir", lambda: tmp_path / "no-resources")
    window = make_window(settings={"model_path": None}, load=False)
    started = start(window)
    qtbot.waitUntil(lambda: started.dialog is not None, timeout=WAIT_MS)

    assert started.dialog.isVisible()
    banner = window.banner.text()
    assert banner.startswith("The demo model is unavailable: The demo model is incomplete in ")
    assert "model.safetensors" in banner and "\n" not in banner
    assert window.session.state is SessionState.NO_MODEL
    assert not window.busy.isVisible()
    assert window.model_label.text() == "No model"

    started.dialog.reject()
    assert "The demo model is unavailable" in window.banner.text()
    assert "Choose a GGUF file in File › Settings" in window.banner.text()
    assert window.session.state is SessionState.NO_MODEL


def test_a_failing_demo_conversion_falls_back_to_choosing_a_model(
    start, make_window, qtbot, monkeypatch, fake_gguf
):
    def disk_full(progress=None, **_kwargs):
        raise ConversionError("Not enough free space in the models folder: 2 MB needed, 0 free.")

    monkeypatch.setattr(demo, "ensure_demo_model", disk_full)
    window = make_window(settings={"model_path": None}, load=False)
    started = start(window)
    qtbot.waitUntil(lambda: started.dialog is not None, timeout=WAIT_MS)
    assert "Not enough free space" in window.banner.text()

    started.dialog.chosen_path = fake_gguf
    started.dialog.accept()
    wait_idle(qtbot, window)
    assert window.session.report.model_path == fake_gguf
    assert window.store.get("model_path") == str(fake_gguf)  # a choice of yours is remembered


def test_closing_while_the_demo_is_made_stops_it(start, make_window, qtbot, monkeypatch):
    steps: list[int] = []

    def long_conversion(progress=None, **_kwargs):
        progress.start("Converting fathom-tiny", 10**6)
        for step in range(10**6):  # ends only when a progress call sees the cancel
            steps.append(step)
            progress.advance(1)
            time.sleep(0.005)

    monkeypatch.setattr(demo, "ensure_demo_model", long_conversion)
    window = make_window(settings={"model_path": None}, load=False)
    started = start(window)
    qtbot.waitUntil(lambda: len(steps) > 3, timeout=WAIT_MS)
    started.stop()  # what main() does once the window has closed
    assert not started.running()
    done = len(steps)
    qtbot.wait(100)
    assert len(steps) == done  # the conversion thread really stopped
    assert started.dialog is None and window.session.report is None


def test_without_a_usable_llama_cpp_the_window_says_why_and_offers_no_conversion(
    start, make_window, qtbot, monkeypatch
):
    # The CUDA package on a machine without the NVIDIA driver: nothing can run, so neither the
    # demo conversion nor the first-run dialog (convert, download) would help.
    from fathom_desktop import app
    from fathom_desktop.engine.errors import BackendUnavailableError
    from fathom_desktop.engine.native import NO_DRIVER

    def no_driver() -> None:
        raise BackendUnavailableError(NO_DRIVER)

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the demo was converted although llama.cpp cannot load")

    monkeypatch.setattr(app, "require_llama", no_driver)
    monkeypatch.setattr(demo, "ensure_demo_model", must_not_run)
    window = make_window(settings={"model_path": None}, load=False)
    started = start(window)
    qtbot.waitUntil(lambda: not started.running(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.banner.text() != "", timeout=WAIT_MS)

    assert window.banner.text().startswith(NO_DRIVER)
    assert window.banner.kind is BannerKind.PROBLEM
    assert window.model_label.text() == "llama.cpp unavailable"
    assert not window.busy.isVisible()
    assert started.dialog is None
    assert window.session.state is SessionState.NO_MODEL
