"""The Local API server inside the app: the official openai client against the window's own
engine, the window and the server taking turns on the one model, the status bar, the key rules,
and a clean stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
from PySide6.QtCore import Qt

from fathom_desktop import credentials
from fathom_desktop.engine.remote_choice import User
from fathom_desktop.engine.scripted import FakeEngine, FakeScript
from fathom_desktop.gui.local_api import WINDOW_WAITS
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.gui.settings_dialog import SettingsDialog
from tests.gui.conftest import WAIT_MS, wait_idle
from tests.gui.remote_helpers import MemoryKeyring, free_port, in_memory_keyring


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    yield from in_memory_keyring()


REASONING = "Count from two: three, four, five. " * 4
ANSWER = "$\\boxed{5}$"


LONG_REASONING = REASONING * 30  # several seconds at the paces below, even on a busy machine


def _engine(tokens_per_s: float | None = None, reasoning: str = REASONING) -> FakeEngine:
    return FakeEngine(FakeScript(reasoning=reasoning, answer=ANSWER), tokens_per_s=tokens_per_s)


def _api_window(make_window, qtbot, engine: FakeEngine, load: bool = True, **settings: object):
    port = free_port()
    window = make_window(
        engine,
        settings={"api_server_enabled": True, "api_server_port": port, **settings},
        load=load,
    )
    qtbot.waitUntil(lambda: window.api_server.running, timeout=WAIT_MS)
    assert window.api_server.server.wait_started()
    return window, f"http://127.0.0.1:{port}/v1"


def _client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def test_the_openai_client_uses_the_windows_model_without_a_second_load(make_window, qtbot):
    engine = _engine()
    window, url = _api_window(make_window, qtbot, engine)
    assert window.api_server.label.text() == f"API server at {url}"
    assert window.api_server.label.isVisible()
    client = _client(url)
    assert [m.id for m in client.models.list().data] == ["fathom-r1-14b.Q4_K_M"]

    reply = client.chat.completions.create(
        model="fathom-r1-14b.Q4_K_M", messages=[{"role": "user", "content": "What is 2 + 3?"}]
    )
    message = reply.choices[0].message
    assert message.content == ANSWER
    assert message.model_extra["reasoning_content"] == REASONING

    stream = client.chat.completions.create(
        model="fathom-r1-14b.Q4_K_M",
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == ANSWER
    # One model, loaded once by the window; the server's requests went to that same engine.
    assert len(engine.load_calls) == 1
    assert len(engine.requests) == 2

    # The window still chats with it afterwards.
    qtbot.keyClicks(window.composer.edit, "And in the window?")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    assert window.chat.assistant_messages()[-1].reasoning.text() == REASONING
    assert len(engine.load_calls) == 1


def test_before_the_window_has_a_model_requests_get_503(make_window, qtbot):
    window, url = _api_window(make_window, qtbot, _engine(), load=False)
    client = _client(url)
    assert [m.id for m in client.models.list().data] == ["no-model-loaded"]
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="no-model-loaded", messages=[{"role": "user", "content": "Hello?"}]
        )
    assert caught.value.status_code == 503
    assert caught.value.body["message"] == "No model is loaded yet; try again once it is."


def test_a_request_waits_while_the_window_replies(make_window, qtbot):
    engine = _engine(tokens_per_s=150.0, reasoning=LONG_REASONING)
    window, url = _api_window(make_window, qtbot, engine)
    qtbot.keyClicks(window.composer.edit, "The window asks first")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.session.state is SessionState.REASONING, timeout=WAIT_MS)

    answered_at: list[float] = []

    def ask() -> None:
        _client(url).chat.completions.create(
            model="fathom-r1-14b.Q4_K_M", messages=[{"role": "user", "content": "Then a tool"}]
        )
        answered_at.append(time.monotonic())

    thread = threading.Thread(target=ask)
    thread.start()
    qtbot.waitUntil(lambda: window.engine_choice.turns.state().server_waiting == 1, timeout=WAIT_MS)
    assert window.engine_choice.turns.state().holder is User.WINDOW
    assert window.api_server.label.text() == f"API server: 1 waiting · {url}"
    wait_idle(qtbot, window)
    window_done = time.monotonic()
    thread.join(WAIT_MS / 1000)
    assert answered_at and answered_at[0] > window_done
    # The engine saw the window's conversation first, then the tool's, never interleaved.
    assert [r[-1].content.split("\n")[0] for r in engine.requests] == [
        "The window asks first",
        "Then a tool",
    ]


def test_the_window_waits_while_the_server_answers_and_the_status_bar_says_so(make_window, qtbot):
    engine = _engine(tokens_per_s=150.0, reasoning=LONG_REASONING)
    window, url = _api_window(make_window, qtbot, engine)

    def ask() -> None:
        _client(url).chat.completions.create(
            model="fathom-r1-14b.Q4_K_M", messages=[{"role": "user", "content": "A tool first"}]
        )

    thread = threading.Thread(target=ask)
    thread.start()
    qtbot.waitUntil(
        lambda: window.api_server.label.text().startswith("API server busy"), timeout=WAIT_MS
    )
    assert window.api_server.label.text() == f"API server busy · {url}"
    qtbot.keyClicks(window.composer.edit, "Then the window")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.statusBar().currentMessage() == WINDOW_WAITS, timeout=WAIT_MS)
    assert window.session.state is SessionState.READING_PROMPT
    thread.join(WAIT_MS / 1000)
    wait_idle(qtbot, window)
    assert window.chat.assistant_messages()[-1].reasoning.text() == LONG_REASONING
    assert [r[-1].content.split("\n")[0] for r in engine.requests] == [
        "A tool first",
        "Then the window",
    ]
    qtbot.waitUntil(lambda: window.api_server.label.text() == f"API server at {url}")


def test_stop_ends_a_message_that_waits_for_the_server(make_window, qtbot):
    engine = _engine(tokens_per_s=100.0, reasoning=LONG_REASONING)
    window, url = _api_window(make_window, qtbot, engine)
    thread = threading.Thread(
        target=lambda: _client(url).chat.completions.create(
            model="fathom-r1-14b.Q4_K_M", messages=[{"role": "user", "content": "Long"}]
        )
    )
    thread.start()
    qtbot.waitUntil(lambda: window.engine_choice.turns.state().holder is User.API_SERVER)
    qtbot.keyClicks(window.composer.edit, "Never mind")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.engine_choice.turns.state().window_waiting == 1)
    window.session.stop()
    wait_idle(qtbot, window)  # at once, not after the server's request
    assert window.engine_choice.turns.state().holder is User.API_SERVER
    assert len(engine.requests) == 1  # the window's message never reached the model
    thread.join(WAIT_MS / 1000)


def test_the_server_key_comes_from_the_keyring_and_is_required(
    make_window, qtbot, memory_keyring: MemoryKeyring
):
    credentials.set_api_key(credentials.LOCAL_API_SERVER, "sk-local")
    credentials.forget_cached()
    window, url = _api_window(make_window, qtbot, _engine())
    with pytest.raises(openai.AuthenticationError):
        _client(url, "wrong").models.list()
    assert _client(url, "sk-local").models.list().data


def test_a_public_address_needs_a_key(qtbot, tmp_path: Path, memory_keyring):
    from fathom_desktop.settings import SettingsStore

    store = SettingsStore(tmp_path / "settings.json")
    dialog = SettingsDialog(store, models_dir=tmp_path / "models")
    qtbot.addWidget(dialog)
    remote = dialog.remote
    qtbot.waitUntil(lambda: remote.api_key.isEnabled())
    remote.api_enabled.setChecked(True)
    qtbot.waitUntil(remote.api_key.isEnabled)
    remote.api_host.setText("0.0.0.0")
    assert not dialog.apply()
    assert dialog.error_text() == (
        "The API server can listen on 0.0.0.0 only with an API key: anyone who can reach it "
        "could use the model. Set a key, or use 127.0.0.1."
    )
    assert store.get("api_server_enabled") is False
    remote.api_key.setText("sk-public")
    assert dialog.apply(), dialog.error_text()
    assert store.get("api_server_host") == "0.0.0.0"
    assert "sk-public" not in (tmp_path / "settings.json").read_text()


def test_turning_it_off_stops_it_and_a_busy_port_is_one_line(make_window, qtbot):
    window, url = _api_window(make_window, qtbot, _engine())
    assert httpx2.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"
    window.store.set("api_server_enabled", False)
    window.apply_settings(["api_server_enabled"])
    assert not window.api_server.running and window.api_server.label.isHidden()
    qtbot.waitUntil(lambda: not _answers(url), timeout=WAIT_MS)

    # A second app (or anything) on the port: the server cannot start, and says why.
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        window.store.set("api_server_enabled", True)
        window.apply_settings(["api_server_enabled"])
        qtbot.waitUntil(lambda: window.banner.text() != "", timeout=WAIT_MS)
        assert window.banner.text() == (
            f"The API server cannot listen on 127.0.0.1:{port} (address already in use)."
        )
        assert not window.api_server.running


def test_closing_the_window_mid_request_stops_the_server_cleanly(make_window, qtbot):
    engine = _engine(tokens_per_s=50.0, reasoning=LONG_REASONING)
    window, url = _api_window(make_window, qtbot, engine)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            stream = _client(url).chat.completions.create(
                model="fathom-r1-14b.Q4_K_M",
                messages=[{"role": "user", "content": "Long"}],
                stream=True,
            )
            for _ in stream:
                pass
        except Exception as error:  # the server went away mid-stream, as expected
            failures.append(error)

    thread = threading.Thread(target=ask)
    thread.start()
    qtbot.waitUntil(lambda: window.engine_choice.turns.state().holder is User.API_SERVER)
    started = time.monotonic()
    window.shutdown()
    assert time.monotonic() - started < 10
    thread.join(10)
    assert not thread.is_alive()
    assert window.engine_choice.turns.state().holder is None
    assert not _answers(url)


def _answers(url: str) -> bool:
    try:
        httpx2.get(url.removesuffix("/v1") + "/health", timeout=2)
    except httpx2.TransportError:
        return False
    return True
