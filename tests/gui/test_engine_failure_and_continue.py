"""What the window shows when the engine's process dies, and Continue on an unfinished reply."""

from __future__ import annotations

from PySide6.QtCore import Qt

from fathom_desktop.engine.scripted import Crash, FakeEngine, FakeScript
from fathom_desktop.gui.composer import ComposerMode
from fathom_desktop.gui.reasoning_pane import ReasoningState
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import MessageStatus
from tests.gui.conftest import WAIT_MS, screenshot, wait_idle

REASONING = "".join(f"Step {i}: the case n = {i} holds.\n" for i in range(300))
ANSWER = "So the sum is $50^2$, that is \\boxed{2500}."


def _engine(tokens_per_s: float | None = None) -> FakeEngine:
    return FakeEngine(FakeScript(reasoning=REASONING, answer=ANSWER), tokens_per_s=tokens_per_s)


def _button(window, text: str):
    return next(b for b in window.banner.buttons if b.text().startswith(text))


def test_a_crash_mid_reply_keeps_the_text_and_offers_reload(make_window, qtbot, artifacts):
    engine = _engine()
    engine.crash_next(Crash(after_tokens=60, gpu_memory=True))
    window = make_window(engine)
    window.session.send("What is the sum of the first 50 odd numbers?")
    qtbot.waitUntil(lambda: window.session.state is SessionState.ENGINE_FAILED, timeout=WAIT_MS)
    screenshot(window, artifacts, "10-engine-crashed")

    message = "The model's process ended with SIGABRT: CUDA error: out of memory"
    assert window.banner.text() == message
    assert [b.text() for b in window.banner.buttons] == [
        "Reload",
        "Reload with fewer GPU layers (24)",
    ]
    reply = window.chat.assistant_messages()[-1]
    (_, stored) = window.session.history.messages(window.session.conversation_id)
    assert stored.status is MessageStatus.ERROR
    assert reply.reasoning.text() == stored.reasoning and REASONING.startswith(stored.reasoning)
    assert reply.reasoning.state is ReasoningState.STOPPED
    assert reply.reasoning.header_text().endswith(" · 60 tokens")
    assert reply.error.isVisible() and reply.error.text() == message
    assert "failed" in reply.figures.text()
    assert reply.continue_button.isVisible()
    assert window.model_label.text() == "No model"
    # The conversation goes on: the composer takes the next message.
    assert window.composer.mode is ComposerMode.READY

    qtbot.mouseClick(_button(window, "Reload with fewer"), Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert engine.load_calls[-1].n_gpu_layers == 24
    assert window.gpu_label.text() == "GPU 24/49 layers"
    assert window.banner.text() == ""
    window.session.send("And the first 60?")
    wait_idle(qtbot, window)
    assert window.chat.assistant_messages()[-1].answer.source == ANSWER


def test_sending_after_a_crash_reloads_the_model_by_itself(make_window, qtbot):
    engine = _engine()
    engine.crash_next(Crash(after_tokens=10))
    window = make_window(engine)
    window.session.send("First")
    qtbot.waitUntil(lambda: window.session.state is SessionState.ENGINE_FAILED, timeout=WAIT_MS)
    assert [b.text() for b in window.banner.buttons] == ["Reload"]  # not a GPU-memory failure

    qtbot.keyClicks(window.composer.edit, "Second")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.session.state is SessionState.LOADING, timeout=WAIT_MS)
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: window.session.turn is None, timeout=WAIT_MS)
    wait_idle(qtbot, window)
    assert [m.text for m in window.chat.user_messages()] == ["First", "Second"]
    assert window.chat.assistant_messages()[-1].answer.source == ANSWER
    assert len(engine.load_calls) == 2


def test_a_crash_while_loading_shows_the_same_banner(make_window, qtbot):
    engine = _engine()
    engine.crash_next(Crash(while_loading=True, signal_name="SIGSEGV", last_error="ggml abort"))
    window = make_window(engine, load=False)
    window.load_model()
    qtbot.waitUntil(lambda: window.session.state is SessionState.ENGINE_FAILED, timeout=WAIT_MS)
    assert window.banner.text() == "The model's process ended with SIGSEGV: ggml abort"
    assert not window.busy.isVisible()
    qtbot.mouseClick(_button(window, "Reload"), Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert window.session.report is not None and window.banner.text() == ""


def test_continue_button_resumes_a_stopped_reply_in_place(make_window, qtbot, artifacts):
    engine = _engine(tokens_per_s=300)
    window = make_window(engine)
    window.session.send("Think it through")
    reply = window.chat.assistant_messages()[-1]
    qtbot.waitUntil(lambda: reply.reasoning.tokens > 20, timeout=WAIT_MS)
    qtbot.mouseClick(window.composer.stop_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert reply.continue_button.isVisible()
    shown = reply.reasoning.text()
    tokens = reply.reasoning.tokens
    screenshot(window, artifacts, "11-stopped-with-continue")

    engine.tokens_per_s = None
    qtbot.mouseClick(reply.continue_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    (continued,) = window.chat.assistant_messages()
    assert continued.reasoning.text() == REASONING and REASONING.startswith(shown)
    assert continued.answer.source == ANSWER
    assert not continued.continue_button.isVisible()
    total = engine.count_tokens(REASONING)
    assert tokens < total
    assert continued.reasoning.header_text().endswith(f" · {total:,} tokens")
    (_, stored) = window.session.history.messages(window.session.conversation_id)
    assert (stored.reasoning, stored.content, stored.status) == (
        REASONING,
        ANSWER,
        MessageStatus.COMPLETE,
    )
    screenshot(window, artifacts, "12-continued")


def test_an_interrupted_reply_from_a_previous_run_can_be_continued(make_window, qtbot, tmp_path):
    from fathom_desktop.history import History

    path = tmp_path / "interrupted.sqlite3"
    with History(path) as history:
        conversation = history.create_conversation("Interrupted")
        history.add_user_message(conversation, "Hello?")
        reply = history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", None)
        history.save_partial(reply, REASONING[:200].rstrip(), "")
    window = make_window(history_path=path, engine=_engine())
    shown = window.chat.assistant_messages()[-1]
    assert "interrupted" in shown.figures.text() and shown.continue_button.isVisible()
    qtbot.mouseClick(shown.continue_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    (_, stored) = window.session.history.messages(window.session.conversation_id)
    assert (stored.reasoning, stored.content) == (REASONING, ANSWER)
    assert window.sidebar.titles() == ["Interrupted"]
