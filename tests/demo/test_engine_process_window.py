"""The window with its engine in a child process, on the demo model: what a user sees when the
engine dies mid-reply, and that the window's own process never loads llama.cpp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fathom_desktop.engine.process_engine import ProcessEngine
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import MessageStatus

# The GUI suite's fixtures: a private FATHOM_HOME per test and a window factory.
from tests.gui.conftest import (  # noqa: F401
    WAIT_MS,
    artifacts,
    fake_gguf,
    fathom_home,
    make_window,
    screenshot,
    wait_idle,
)

pytestmark = pytest.mark.slow
PACED = "tests.demo.paced_engine:paced_llama_engine"
QUESTION = "Tom has 48 apples and buys 24 more. How many apples does he have now?"


@pytest.mark.parametrize("kill_with", [signal.SIGKILL, signal.SIGSEGV])
def test_the_window_outlives_its_engine_and_the_chat_goes_on(
    make_window,  # noqa: F811
    qtbot,
    demo_gguf: Path,
    artifacts: Path,  # noqa: F811
    kill_with: signal.Signals,
) -> None:
    engine = ProcessEngine(factory=PACED)
    window = make_window(engine, settings={"model_path": str(demo_gguf), "temperature": 0.0})
    session = window.session
    assert session.send(QUESTION)
    # Half-way through the reasoning, the engine's process dies.
    qtbot.waitUntil(lambda: len(_shown(window).split()) >= 8, timeout=WAIT_MS)
    os.kill(engine.pid, kill_with)
    qtbot.waitUntil(lambda: session.state is SessionState.ENGINE_FAILED, timeout=WAIT_MS)

    shown = _shown(window)
    assert window.isVisible()
    assert kill_with.name in window.banner.text()
    assert "Reload" in [button.text() for button in window.banner.buttons]
    (asked, reply) = session.history.messages(session.conversation_id)
    assert asked.content == QUESTION
    assert reply.status is MessageStatus.ERROR
    # Every character that was on screen was kept.
    assert shown and (reply.reasoning or "") + reply.content == shown
    screenshot(window, artifacts, f"engine-killed-{kill_with.name}")

    # The next message reloads the model by itself and is answered.
    assert session.send("What is 17 + 25?")
    qtbot.waitUntil(lambda: session.state is SessionState.READY, timeout=60_000)
    last = session.history.messages(session.conversation_id)[-1]
    assert last.status is MessageStatus.COMPLETE and "\\boxed{" in last.content


def _shown(window) -> str:
    messages = window.chat.assistant_messages()
    if not messages:
        return ""
    reply = messages[-1]
    return reply.reasoning.text() + reply.answer.toPlainText()


_NO_LLAMA_IN_THE_WINDOW = r"""
import json, sys
from pathlib import Path
from PySide6.QtWidgets import QApplication
app = QApplication([])
from fathom_desktop.app import _engine_host, require_llama
from fathom_desktop.gui.main_window import MainWindow
from fathom_desktop.gui.model_list import probe_gpu
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import History
from fathom_desktop.settings import SettingsStore
from fathom_desktop.versions import collect

home = Path(sys.argv[2])
store = SettingsStore(home / "settings.json")
store.update({"model_path": sys.argv[1], "temperature": 0.0})
history = History(home / "history.sqlite3")
engine = _engine_host()
window = MainWindow(lambda: engine, store, history)
window.show()
require_llama()  # what the demo's start asks first
window.load_model()
def wait(done, limit=60.0):
    import time
    end = time.monotonic() + limit
    while not done():
        app.processEvents()
        time.sleep(0.01)
        assert time.monotonic() < end
wait(lambda: window.session.state is SessionState.READY)
window.session.send("What is 17 + 25?")
wait(lambda: window.session.state is not SessionState.READY)
wait(lambda: window.session.state is SessionState.READY)
versions = collect()  # the About dialog's facts
gpu = probe_gpu()  # the settings dialog's GPU check
answer = history.messages(window.session.conversation_id)[-1].content
window.shutdown()
history.close()
print(json.dumps({"llama_cpp": "llama_cpp" in sys.modules, "answer": answer,
                  "backend": versions.backend.value}))
"""


def test_the_window_process_never_loads_llama_cpp(demo_gguf: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NO_LLAMA_IN_THE_WINDOW, str(demo_gguf), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "\\boxed{" in result["answer"]  # a real reply, from llama.cpp in the engine's process
    assert result["backend"] == "CPU"
    assert result["llama_cpp"] is False
