"""Starting the app: the command line, the first-run dialog, the real engine on a tiny model."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from PySide6.QtCore import qVersion

from convert.errors import ConversionError
from fathom_desktop import __version__, demo
from fathom_desktop.app import start_model
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import MessageStatus
from tests.conftest import PROJECT_ROOT
from tests.gui.conftest import WAIT_MS, wait_idle


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fathom_desktop", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version():
    result = _run("--version")
    assert result.returncode == 0
    (line,) = result.stdout.splitlines()
    # What a bug report needs: the app, which llama.cpp build runs the model, and the Qt.
    assert line.startswith(f"fathom-desktop {__version__}: ")
    assert re.search(r"llama\.cpp (CPU|CUDA) backend \(llama-cpp-python \d+\.\d+", line), line
    assert f"Qt {qVersion()}" in line


def test_a_missing_model_argument_is_one_readable_line(tmp_path):
    result = _run("--model", str(tmp_path / "nowhere.gguf"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"fathom-desktop: {tmp_path / 'nowhere.gguf'} is not a file."
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def no_demo(monkeypatch):
    """This copy of the app has no usable demo model, so a model must be chosen."""

    def unavailable(progress=None, **_kwargs):
        raise ConversionError("The demo model is incomplete in /app/resources/fathom-tiny.")

    monkeypatch.setattr(demo, "ensure_demo_model", unavailable)


def _first_run_dialog(start_model_result, qtbot):
    qtbot.waitUntil(lambda: start_model_result.dialog is not None, timeout=WAIT_MS)
    return start_model_result.dialog


def test_no_model_configured_opens_the_first_run_dialog_then_loads_its_choice(
    make_window, qtbot, fake_gguf, no_demo
):
    window = make_window(settings={"model_path": None}, load=False)
    dialog = _first_run_dialog(start_model(window, window.store, None), qtbot)
    assert dialog.isVisible()
    assert window.session.state is SessionState.NO_MODEL

    dialog.chosen_path = fake_gguf  # what its "Open a GGUF file" page does on success
    dialog.accept()
    wait_idle(qtbot, window)
    assert window.store.get("model_path") == str(fake_gguf)
    assert window.session.report is not None and window.session.report.model_path == fake_gguf


def test_giving_up_on_the_first_run_leaves_a_usable_window(make_window, qtbot, no_demo):
    window = make_window(settings={"model_path": None}, load=False)
    dialog = _first_run_dialog(start_model(window, window.store, None), qtbot)
    dialog.reject()
    assert "Choose a GGUF file in File › Settings" in window.banner.text()
    assert window.session.state is SessionState.NO_MODEL


def test_the_fake_engine_flag_loads_the_demo_model(make_window, qtbot):
    window = make_window(settings={"model_path": None}, load=False)
    assert start_model(window, window.store, None, fake_engine=True) is None
    wait_idle(qtbot, window)
    assert window.model_label.text().startswith("fathom-r1-14b-demo")


def test_real_engine_streams_a_reply_from_a_tiny_model(make_window, qtbot, tiny_gguf_f32):
    from fathom_desktop.engine import LlamaEngine

    window = make_window(
        LlamaEngine(),
        settings={"model_path": str(tiny_gguf_f32), "n_ctx": 512, "max_tokens": 24, "seed": 1},
        load=False,
    )
    window.load_model()
    qtbot.waitUntil(lambda: window.session.state is SessionState.READY, timeout=60_000)
    assert window.gpu_label.text()  # "CPU only" here, or GPU layers on a GPU build
    window.session.send("Hello")
    wait_idle(qtbot, window)

    reply = window.chat.assistant_messages()[-1]
    (_, stored) = window.session.history.messages(window.session.conversation_id)
    assert stored.status is MessageStatus.COMPLETE
    assert stored.stats["reasoning_tokens"] + stored.stats["answer_tokens"] > 0
    assert stored.stats["finish_reason"] in ("length", "stop")
    assert reply.reasoning.text() == (stored.reasoning or "")
    assert reply.answer.source == stored.content
    assert "tok/s" in reply.figures.text()


def test_real_engine_stop_ends_the_stream(make_window, qtbot, tiny_gguf_f32):
    from fathom_desktop.engine import LlamaEngine

    # The random tiny model may end its turn at once; ignoring its end token keeps it talking.
    window = make_window(
        LlamaEngine(stop_at_end_of_generation=False),
        settings={"model_path": str(tiny_gguf_f32), "n_ctx": 4096, "max_tokens": 4000},
        load=False,
    )
    window.load_model()
    qtbot.waitUntil(lambda: window.session.state is not SessionState.LOADING, timeout=60_000)
    assert window.session.state is SessionState.READY, window.banner.text()
    window.session.send("Go on and on")
    reply = window.chat.assistant_messages()[-1]
    qtbot.waitUntil(lambda: bool(reply.reasoning.text() + reply.answer.source), timeout=WAIT_MS)
    window.session.stop()
    wait_idle(qtbot, window)
    (_, stored) = window.session.history.messages(window.session.conversation_id)
    assert stored.status is MessageStatus.STOPPED
    assert stored.stats["finish_reason"] == "cancelled"
    assert stored.stats["reasoning_tokens"] + stored.stats["answer_tokens"] < 4000
