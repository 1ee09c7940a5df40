"""The window with a remote engine: Settings › Model's server, Test connection, the API key in the
keyring, and the chat (reasoning pane, answer, Answer now, consensus, failures) against a stand-in
OpenAI-compatible server on 127.0.0.1 that speaks vLLM's and llama.cpp server's documented
formats. And with no server configured, the app connects nowhere."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from fathom_desktop import credentials
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.gui.settings_dialog import SettingsDialog
from fathom_desktop.history import MessageStatus
from fathom_desktop.settings import SettingsStore
from tests.gui.conftest import WAIT_MS, wait_idle
from tests.gui.remote_helpers import MemoryKeyring, free_port, in_memory_keyring
from tests.serve.replay import (
    Reply,
    llamacpp_chunk,
    pieces,
    replay_server,
    stream_vllm,
    vllm_chunk,
)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    yield from in_memory_keyring()


REASONING = "Two plus three: start at two and count three more: three, four, five."
ANSWER = "The sum is $\\boxed{5}$."
KEY = "sk-remote-test"


def _vllm_reply(headers: list[str | None]):
    def script(reply: Reply, body: dict, index: int) -> None:
        headers.append(reply.headers.get("Authorization"))
        n = int(body.get("n", 1))
        if n == 1:
            stream_vllm(reply, REASONING, ANSWER)
            return
        # vLLM streams the n choices interleaved, chunk by chunk.
        reply.start_events()
        for step in range(3):
            for choice in range(n):
                thought = f"sample {choice} thinks ({step}). "
                reply.event(vllm_chunk({"reasoning_content": thought}, index=choice))
        for choice in range(n):
            answer = ANSWER if choice else "So $\\boxed{6}$."
            reply.event(vllm_chunk({"content": answer}, finish="stop", index=choice))
        reply.end_events()

    return script


def _llamacpp_reply(reply: Reply, body: dict, index: int) -> None:
    reply.start_events()
    for piece in pieces(REASONING):
        reply.event(llamacpp_chunk({"reasoning_content": piece}))
    for piece in pieces(ANSWER):
        reply.event(llamacpp_chunk({"content": piece}))
    usage = {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60}
    reply.event(llamacpp_chunk({}, finish="stop", usage=usage))
    reply.end_events()


def _server_settings(url: str, model: str | None = None) -> dict[str, object]:
    return {"model_source": "server", "server_url": url, "server_model": model}


def _ask(window, qtbot, text: str = "What is 2 + 3?") -> None:
    qtbot.keyClicks(window.composer.edit, text)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


# -- Settings › Model ---------------------------------------------------------------------------


def _dialog(qtbot, tmp_path: Path, store: SettingsStore) -> SettingsDialog:
    dialog = SettingsDialog(store, models_dir=tmp_path / "models")
    qtbot.addWidget(dialog)
    remote = dialog.remote
    # The key fields fill from the keyring in the background; they are disabled until then.
    qtbot.waitUntil(lambda: remote.server_key.isEnabled() and remote.api_key.isEnabled())
    return dialog


def _choose_server(qtbot, dialog: SettingsDialog) -> None:
    remote = dialog.remote
    remote.source.setCurrentIndex(remote.source.findData("server"))
    qtbot.waitUntil(remote.server_key.isEnabled)  # its key, read from the keyring


def test_test_connection_reports_the_server_in_one_line_and_apply_keeps_the_key_out_of_the_file(
    qtbot, tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    store = SettingsStore(tmp_path / "settings.json")
    headers: list[str | None] = []
    with replay_server(owned_by="vllm", script=_vllm_reply(headers)) as server:
        dialog = _dialog(qtbot, tmp_path, store)
        remote = dialog.remote
        assert remote.server_box.isHidden()  # a local GGUF by default
        _choose_server(qtbot, dialog)
        assert not remote.server_box.isHidden()
        remote.url.setText(server.url)
        remote.server_key.setText(KEY)
        qtbot.mouseClick(remote.test_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: remote.connection_result.text().startswith("Reachable"))
        line = remote.connection_result.text()
        assert "\n" not in line
        assert "vLLM, 1 model (FractalAIResearch/Fathom-R1-14B)" in line
        assert "reasoning in `reasoning_content`" in line
        assert "Answer now: yes" in line and "consensus: one request (n > 1)" in line
        assert headers == [f"Bearer {KEY}"]  # the probe sent the typed key
        # The model list came from /v1/models.
        assert [remote.model.itemText(i) for i in range(remote.model.count())] == [
            "FractalAIResearch/Fathom-R1-14B"
        ]
        applied: list[list[str]] = []
        dialog.applied.connect(applied.append)
        assert dialog.apply(), dialog.error_text()
    saved = (tmp_path / "settings.json").read_text()
    assert KEY not in saved
    assert json.loads(saved)["settings"]["model_source"] == "server"
    assert json.loads(saved)["settings"]["server_url"] == server.url
    assert memory_keyring.passwords == {(credentials.SERVICE, credentials.REMOTE_SERVER): KEY}
    assert "server_api_key" in applied[0] and "model_source" in applied[0]

    # Opened again, the dialog shows the key from the keyring (masked) and the server chosen.
    again = _dialog(qtbot, tmp_path, SettingsStore.load(tmp_path / "settings.json"))
    assert again.remote.server_key.text() == KEY
    assert again.remote.chooses_server()


def test_settings_ask_the_keyring_only_for_the_parts_in_use(
    qtbot, tmp_path: Path, memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    read = memory_keyring.get_password
    monkeypatch.setattr(
        memory_keyring,
        "get_password",
        lambda service, user: asked.append(user) or read(service, user),
    )
    dialog = _dialog(qtbot, tmp_path, SettingsStore(tmp_path / "settings.json"))
    assert asked == []  # a locked keyring would otherwise ask to be unlocked at every visit
    _choose_server(qtbot, dialog)
    dialog.remote.api_enabled.setChecked(True)
    qtbot.waitUntil(dialog.remote.api_key.isEnabled)
    assert asked == [credentials.REMOTE_SERVER, credentials.LOCAL_API_SERVER]


def test_test_connection_failure_is_one_line(qtbot, tmp_path: Path, memory_keyring) -> None:
    dialog = _dialog(qtbot, tmp_path, SettingsStore(tmp_path / "settings.json"))
    remote = dialog.remote
    _choose_server(qtbot, dialog)
    port = free_port()
    remote.url.setText(f"http://127.0.0.1:{port}/v1")
    qtbot.mouseClick(remote.test_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: remote.connection_result.text().startswith("Failed"), timeout=WAIT_MS)
    assert remote.connection_result.text() == (
        f"Failed: Connection to 127.0.0.1:{port} refused: is the server running on that port?"
    )
    assert remote.test_button.isEnabled()


def test_a_server_without_url_is_refused_with_the_reason(qtbot, tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "settings.json")
    dialog = _dialog(qtbot, tmp_path, store)
    _choose_server(qtbot, dialog)
    assert not dialog.apply()
    assert dialog.error_text() == "Enter the server's URL, e.g. http://gpu-box:8000/v1."
    assert store.get("model_source") == "local"


def test_a_key_the_keyring_cannot_keep_still_works_for_this_run(qtbot, tmp_path: Path) -> None:
    # The suite's keyring is keyring's "fail" backend, as on a desktop without Secret Service.
    credentials.forget_cached()
    store = SettingsStore(tmp_path / "settings.json")
    dialog = _dialog(qtbot, tmp_path, store)
    _choose_server(qtbot, dialog)
    dialog.remote.url.setText("http://127.0.0.1:9/v1")
    dialog.remote.server_key.setText(KEY)
    assert not dialog.apply()  # stays open so that the line is read
    assert dialog.error_text().startswith("The API key could not be saved in the system keyring")
    assert dialog.error_text().endswith("it is used until the app closes.")
    assert store.get("model_source") == "server"  # everything else was applied
    assert credentials.api_key(credentials.REMOTE_SERVER) == KEY
    assert KEY not in (tmp_path / "settings.json").read_text()
    credentials.forget_cached()


# -- chatting with a remote engine -----------------------------------------------------------


def test_the_window_chats_with_a_server_with_the_key_from_the_keyring(
    make_window, qtbot, memory_keyring: MemoryKeyring
) -> None:
    credentials.set_api_key(credentials.REMOTE_SERVER, KEY)
    credentials.forget_cached()  # read back from the keyring, as at the next start
    headers: list[str | None] = []
    with replay_server(owned_by="vllm", script=_vllm_reply(headers)) as server:
        window = make_window(settings=_server_settings(server.url))
        assert window.model_label.text() == "Fathom-R1-14B"
        assert window.gpu_label.text() == "on the server"
        assert window.engine.load_calls == []  # the local model was never loaded
        _ask(window, qtbot)
        wait_idle(qtbot, window)
        reply = window.chat.assistant_messages()[-1]
        assert reply.reasoning.text() == REASONING
        assert "5" in reply.answer.plain_text()
        assert headers == [f"Bearer {KEY}"]
        assert server.requests[-1]["messages"][-1]["content"].startswith("What is 2 + 3?")
        stored = window.session.history.messages(window.session.conversation_id)[-1]
        assert stored.status is MessageStatus.COMPLETE
        assert stored.reasoning == REASONING and stored.content == f"\n\n{ANSWER}".lstrip("\n")


def test_going_back_to_the_local_model_from_a_server(make_window, qtbot) -> None:
    with replay_server(owned_by="vllm", script=_vllm_reply([])) as server:
        window = make_window(settings=_server_settings(server.url))
        assert window.banner.text() == f"vLLM at {server.url}, model {server.model}"
        _ask(window, qtbot)
        wait_idle(qtbot, window)
    window.store.update({"model_source": "local"})
    window.apply_settings(["model_source"])
    qtbot.waitUntil(lambda: len(window.engine.load_calls) == 1, timeout=WAIT_MS)
    wait_idle(qtbot, window)
    assert window.model_label.text() == "fathom-r1-14b.Q4_K_M.gguf"
    assert window.banner.text() == ""  # the server's note went with the server
    assert window.composer.answer_now_button.toolTip() == (
        "End the reasoning here and ask for the answer"
    )
    _ask(window, qtbot, "And locally?")
    wait_idle(qtbot, window)
    assert window.engine.requests[-1][-1].content.startswith("And locally?")
    # The conversation with the server's reply went to the local model as it was.
    assert window.engine.requests[-1][0].content.startswith("What is 2 + 3?")


def test_consensus_is_one_request_with_n_on_vllm(make_window, qtbot) -> None:
    headers: list[str | None] = []
    with replay_server(owned_by="vllm", script=_vllm_reply(headers)) as server:
        window = make_window(settings=_server_settings(server.url))
        window.composer.set_text("What is 2 + 3?")
        assert window.consensus(3)
        wait_idle(qtbot, window)
        assert len(server.requests) == 1 and server.requests[0]["n"] == 3
        # The samples show side by side, each with its own reasoning, as a local consensus.
        view = window.chat.assistant_messages()[-1].consensus
        assert [lane.answer for lane in view.lanes] == ["= 6", "= 5", "= 5"]
        assert view.chart.caption() == "Vote: 2 of 3 agree (67%) on 5"
        pane = window.chat.assistant_messages()[-1].reasoning.text()
        assert pane.strip() == " ".join(f"sample 1 thinks ({step})." for step in range(3))  # winner
        view.select(2)
        pane = window.chat.assistant_messages()[-1].reasoning.text()
        assert pane.strip() == " ".join(f"sample 2 thinks ({step})." for step in range(3))
        stored = window.session.history.messages(window.session.conversation_id)[-1]
        assert stored.stats["consensus"]["answer"] == "5"
        assert stored.stats["consensus"]["votes"] == {"5": 2, "6": 1}


def test_consensus_is_k_requests_a_few_at_a_time_where_n_is_unsupported(make_window, qtbot) -> None:
    with replay_server(owned_by="llamacpp", script=_llamacpp_reply) as server:
        window = make_window(settings=_server_settings(server.url))
        window.composer.set_text("What is 2 + 3?")
        assert window.consensus(6)
        wait_idle(qtbot, window)
        assert len(server.requests) == 6
        assert all("n" not in body for body in server.requests)
        assert 1 <= server.max_in_flight <= 4  # RemoteEndpoint.max_parallel
        view = window.chat.assistant_messages()[-1].consensus
        assert len(view.lanes) == 6 and view.chart.caption() == "Vote: 6 of 6 agree (100%) on 5"
        assert window.chat.assistant_messages()[-1].reasoning.text() == REASONING
        stored = window.session.history.messages(window.session.conversation_id)[-1]
        assert stored.stats["consensus"]["answer"] == "5"


def test_answer_now_is_disabled_with_the_reason_where_the_server_cannot_prefill(
    make_window, qtbot
) -> None:
    release = threading.Event()

    def slow_reasoning(reply: Reply, body: dict, index: int) -> None:
        reply.start_events()
        reply.event(llamacpp_chunk({"content": "Let me think"}))
        release.wait(10)
        reply.event(llamacpp_chunk({"content": "</think>\n\n$\\boxed{5}$"}, finish="stop"))
        reply.end_events()

    with replay_server(owned_by="me", model="fathom.gguf", script=slow_reasoning) as server:
        window = make_window(settings=_server_settings(server.url))
        _ask(window, qtbot)
        qtbot.waitUntil(lambda: window.session.state is SessionState.REASONING, timeout=WAIT_MS)
        button = window.composer.answer_now_button
        assert button.isVisible() and not button.isEnabled()
        assert not window.answer_now_action.isEnabled()
        assert button.toolTip() == (
            "Unavailable: llama-cpp-python server cannot continue a started reply, so the "
            "reasoning cannot be cut short."
        )
        # llama-cpp-python's server does not report its context window: the meter says so.
        assert window.meter.label.text().endswith("· context size not reported")
        release.set()
        wait_idle(qtbot, window)
        assert window.chat.assistant_messages()[-1].reasoning.text() == "Let me think"


def test_answer_now_on_llama_cpp_server_continues_the_reply(make_window, qtbot) -> None:
    def script(reply: Reply, body: dict, index: int) -> None:
        if index == 0:
            reply.start_events()
            reply.event(llamacpp_chunk({"reasoning_content": "Counting up from two"}))
            reply.client_left(within_s=10)  # until Answer now closes this stream
            return
        _llamacpp_reply_answer_only(reply)

    with replay_server(owned_by="llamacpp", script=script) as server:
        window = make_window(settings=_server_settings(server.url))
        _ask(window, qtbot)
        qtbot.waitUntil(lambda: window.session.state is SessionState.REASONING, timeout=WAIT_MS)
        assert window.composer.answer_now_button.isEnabled()
        qtbot.mouseClick(window.composer.answer_now_button, Qt.MouseButton.LeftButton)
        wait_idle(qtbot, window)
        continued = server.requests[1]["messages"][-1]
        assert continued["role"] == "assistant"
        assert continued["content"].startswith("Counting up from two")
        assert "</think>" in continued["content"]
        assert "5" in window.chat.assistant_messages()[-1].answer.plain_text()


def _llamacpp_reply_answer_only(reply: Reply) -> None:
    reply.start_events()
    reply.event(llamacpp_chunk({"content": ANSWER}))
    reply.event(llamacpp_chunk({}, finish="stop"))
    reply.end_events()


# -- failures: one line, nothing lost --------------------------------------------------------


def test_a_stream_cut_mid_reply_keeps_what_came_and_says_so(make_window, qtbot) -> None:
    def cut(reply: Reply, body: dict, index: int) -> None:
        reply.start_events()
        for piece in pieces(REASONING):
            reply.event(vllm_chunk({"reasoning_content": piece}))
        reply.cut()

    with replay_server(owned_by="vllm", script=cut) as server:
        window = make_window(settings=_server_settings(server.url))
        _ask(window, qtbot)
        wait_idle(qtbot, window)
        assert window.banner.text() == (
            "The server's stream was cut off mid-reply; what came is kept. "
            "Continue or Regenerate to try again."
        )
        reply = window.chat.assistant_messages()[-1]
        assert reply.reasoning.text() == REASONING
        assert "the server's stream was cut off" in reply.figures.text()
        stored = window.session.history.messages(window.session.conversation_id)[-1]
        assert stored.reasoning == REASONING
        assert stored.status is MessageStatus.STOPPED  # Continue can take it up again
        assert reply.continue_button.isVisible()


def test_a_server_that_is_down_is_one_line_in_the_banner(make_window, qtbot) -> None:
    port = free_port()
    window = make_window(settings=_server_settings(f"http://127.0.0.1:{port}/v1"), load=False)
    window.load_model()
    qtbot.waitUntil(lambda: window.session.state is SessionState.NO_MODEL, timeout=WAIT_MS)
    assert window.banner.text() == (
        f"Connection to 127.0.0.1:{port} refused: is the server running on that port? "
        "Check the server in File › Settings, or use a local model."
    )
    # The settings are the user's choice and stay as they were.
    assert window.store.get("model_source") == "server"


def test_a_server_that_fails_mid_conversation_loses_nothing(make_window, qtbot) -> None:
    def failing(reply: Reply, body: dict, index: int) -> None:
        if index == 0:
            stream_vllm(reply, REASONING, ANSWER)
        else:
            reply.send_json(500, {"error": {"message": "CUDA out of memory"}})

    with replay_server(owned_by="vllm", script=failing) as server:
        window = make_window(settings=_server_settings(server.url))
        _ask(window, qtbot)
        wait_idle(qtbot, window)
        _ask(window, qtbot, "And 3 + 4?")
        wait_idle(qtbot, window)
        failed = window.chat.assistant_messages()[-1]
        assert "The server failed (500): CUDA out of memory" in failed.error.text()
        assert window.banner.text() == "The server failed (500): CUDA out of memory"
        stored = window.session.history.messages(window.session.conversation_id)
        assert [m.content for m in stored if m.role == "user"] == ["What is 2 + 3?", "And 3 + 4?"]
        assert stored[1].reasoning == REASONING
        assert stored[-1].status is MessageStatus.ERROR


# -- offline unless a server is configured --------------------------------------------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to connect, listen or look a name up, refused and recorded."""
    attempts: list[object] = []

    def refuse(_sock: socket.socket, address: object, *args: object) -> None:
        attempts.append(address)
        raise OSError("the test forbids network connections")

    def no_lookups(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("the test forbids name lookups")

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookups)
    return attempts


def test_without_a_server_configured_the_window_connects_nowhere(
    make_window, qtbot, tmp_path: Path, connections: list[object]
) -> None:
    window = make_window()
    _ask(window, qtbot)
    wait_idle(qtbot, window)
    window.open_settings()
    dialog = window.findChild(SettingsDialog)
    qtbot.waitUntil(lambda: dialog.remote.server_key.isEnabled())
    qtbot.waitUntil(dialog.apply, timeout=WAIT_MS)  # once the model file is checked
    dialog.close()
    assert window.chat.assistant_messages()[-1].answer.plain_text()
    assert not window.api_server.running
    assert connections == []


def test_the_guard_catches_a_window_that_connects(
    make_window, qtbot, connections: list[object]
) -> None:
    window = make_window(settings=_server_settings("http://127.0.0.1:9/v1"), load=False)
    window.load_model()
    qtbot.waitUntil(lambda: window.session.state is SessionState.NO_MODEL, timeout=WAIT_MS)
    assert connections  # so the empty list above means no attempt, not a blind guard
