"""The chat window driven by the fake engine: what a user sees and what the history keeps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from fathom_desktop.engine.scripted import FakeEngine, FakeScript
from fathom_desktop.engine.types import FATHOM_EVAL_INSTRUCTION, FinishReason
from fathom_desktop.gui.composer import ComposerMode
from fathom_desktop.gui.context_meter import MeterLevel
from fathom_desktop.gui.reasoning_pane import ReasoningState
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import History, MessageStatus
from tests.gui.conftest import WAIT_MS, screenshot, wait_idle, write_fake_gguf

LONG_REASONING = "".join(f"Step {i}: consider the case n = {i}.\n" for i in range(400))
# About 1,200 fake tokens: enough for a thousands separator in the pane's header.
MEDIUM_REASONING = LONG_REASONING[: LONG_REASONING.index("Step 150:")]


def _slow(tokens_per_s: float = 150.0, **script: str) -> FakeEngine:
    return FakeEngine(
        FakeScript(**{"reasoning": LONG_REASONING, **script}), tokens_per_s=tokens_per_s
    )


def _stored(window) -> list:
    return window.session.history.messages(window.session.conversation_id)


def test_send_streams_reasoning_then_renders_the_answer(make_window, qtbot, artifacts):
    window = make_window(_slow(tokens_per_s=1000.0, reasoning=MEDIUM_REASONING))
    qtbot.keyClicks(window.composer.edit, "Sum of the first 50 odd numbers?")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)

    reply = window.chat.assistant_messages()[-1]
    qtbot.waitUntil(lambda: reply.reasoning.tokens > 30, timeout=WAIT_MS)
    assert window.composer.mode is ComposerMode.THINKING
    assert reply.reasoning.header_text().startswith("Thinking… ")
    assert "Step 1: consider" in reply.reasoning.text()
    screenshot(window, artifacts, "01-thinking")

    wait_idle(qtbot, window)
    assert window.chat.user_messages()[-1].text == "Sum of the first 50 odd numbers?"
    assert reply.reasoning.text() == MEDIUM_REASONING
    tokens = window.engine.count_tokens(MEDIUM_REASONING)
    assert tokens > 1000
    assert reply.reasoning.header_text().startswith("Thought for ")
    assert reply.reasoning.header_text().endswith(f" s · {tokens:,} tokens")
    assert "\\boxed" not in reply.answer.toPlainText()  # rendered, not raw TeX
    assert reply.answer.formulas >= 5
    screenshot(window, artifacts, "02-answer-rendered")

    # The engine saw the question with Fathom's instruction in the user's turn (no system
    # prompt, as R1 models are evaluated); the history kept everything.
    sent = window.engine.requests[-1]
    assert [m.role for m in sent] == ["user"]
    assert sent[0].content == f"Sum of the first 50 odd numbers?\n{FATHOM_EVAL_INSTRUCTION}"
    user, assistant = _stored(window)
    assert assistant.status is MessageStatus.COMPLETE
    assert assistant.reasoning == MEDIUM_REASONING
    assert assistant.content == window.engine.script.answer
    assert assistant.stats["finish_reason"] == FinishReason.STOP.value
    assert window.sidebar.titles() == ["Sum of the first 50 odd numbers?"]
    assert window.speed_label.text().endswith("tok/s")


def test_shift_enter_makes_a_new_line_and_sends_nothing(make_window, qtbot):
    window = make_window()
    qtbot.keyClicks(window.composer.edit, "first line")
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.composer.edit, "second line")
    assert window.composer.text() == "first line\nsecond line"
    assert window.chat.user_messages() == []
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    assert window.chat.user_messages()[0].text == "first line\nsecond line"
    wait_idle(qtbot, window)


def test_reasoning_pane_collapses_when_the_answer_starts_and_toggles(make_window, qtbot, artifacts):
    window = make_window()
    window.session.send("What is 2 + 2?")
    wait_idle(qtbot, window)
    pane = window.chat.assistant_messages()[-1].reasoning
    assert not pane.is_expanded() and not pane.body.isVisible()
    screenshot(window, artifacts, "03-reasoning-collapsed")

    qtbot.mouseClick(pane.header, Qt.MouseButton.LeftButton)
    assert pane.is_expanded() and pane.body.isVisible()
    screenshot(window, artifacts, "04-reasoning-expanded")
    pane.header.setFocus()
    qtbot.keyClick(pane.header, Qt.Key.Key_Return)
    assert not pane.is_expanded()
    qtbot.keyClick(pane.header, Qt.Key.Key_Space)
    assert pane.is_expanded()

    pane.copy()
    assert QGuiApplication.clipboard().text() == window.engine.script.reasoning


def test_reasoning_stays_open_when_the_setting_says_so(make_window, qtbot):
    window = make_window(settings={"collapse_reasoning_when_answering": False})
    window.session.send("What is 2 + 2?")
    wait_idle(qtbot, window)
    assert window.chat.assistant_messages()[-1].reasoning.is_expanded()


def test_stop_mid_reasoning_keeps_the_partial_reasoning(make_window, qtbot, artifacts):
    window = make_window(_slow())
    window.session.send("Think for a long time.")
    reply = window.chat.assistant_messages()[-1]
    qtbot.waitUntil(lambda: reply.reasoning.tokens > 20, timeout=WAIT_MS)
    qtbot.mouseClick(window.composer.stop_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    screenshot(window, artifacts, "05-stopped-while-thinking")

    assert reply.reasoning.state is ReasoningState.STOPPED
    assert reply.reasoning.header_text().startswith("Stopped after thinking")
    assert "stopped" in reply.figures.text()
    assert not reply.answer.isVisible()
    (_, assistant) = _stored(window)
    assert assistant.status is MessageStatus.STOPPED
    assert assistant.reasoning and LONG_REASONING.startswith(assistant.reasoning)
    assert len(assistant.reasoning) < len(LONG_REASONING)
    assert assistant.content == ""
    assert window.composer.mode is ComposerMode.READY


def test_answer_now_ends_the_reasoning_and_gets_an_answer(make_window, qtbot):
    window = make_window(_slow())
    window.session.send("Answer quickly.")
    reply = window.chat.assistant_messages()[-1]
    qtbot.waitUntil(lambda: reply.reasoning.tokens > 20, timeout=WAIT_MS)
    assert window.composer.answer_now_button.isEnabled()
    qtbot.mouseClick(window.composer.answer_now_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)

    assert reply.answer.source == window.engine.script.answer
    assert len(reply.reasoning.text()) < len(LONG_REASONING)
    assert "answered early" in reply.reasoning.header_text()
    (_, assistant) = _stored(window)
    assert assistant.status is MessageStatus.COMPLETE
    assert assistant.stats["thinking_closed_early"] is True


def test_regenerate_replaces_the_last_answer(make_window, qtbot):
    window = make_window()
    window.session.send("Pick a number.")
    wait_idle(qtbot, window)
    first_reply = _stored(window)[-1]
    qtbot.mouseClick(
        window.chat.assistant_messages()[-1].regenerate_button, Qt.MouseButton.LeftButton
    )
    wait_idle(qtbot, window)

    stored = _stored(window)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[-1].created_at > first_reply.created_at
    assert stored[-1].status is MessageStatus.COMPLETE
    assert len(window.chat.assistant_messages()) == 1
    first, second = window.engine.requests
    assert first == second  # the same conversation was asked again


def test_edit_and_resend_drops_what_followed(make_window, qtbot):
    window = make_window()
    window.session.send("First question")
    wait_idle(qtbot, window)
    window.session.send("Second question")
    wait_idle(qtbot, window)

    first = window.chat.user_messages()[0]
    qtbot.mouseClick(first.edit_button, Qt.MouseButton.LeftButton)
    first.editor.setPlainText("First question, edited")
    qtbot.mouseClick(first.resend_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)

    stored = _stored(window)
    assert [(m.role, m.content) for m in stored][0] == ("user", "First question, edited")
    assert [m.role for m in stored] == ["user", "assistant"]
    assert [m.text for m in window.chat.user_messages()] == ["First question, edited"]
    last_request = window.engine.requests[-1]
    assert [m.content for m in last_request if m.role == "user"] == [
        f"First question, edited\n{FATHOM_EVAL_INSTRUCTION}"
    ]


def test_earlier_turns_are_sent_without_their_reasoning(make_window, qtbot):
    window = make_window()
    window.session.send("One")
    wait_idle(qtbot, window)
    window.session.send("Two")
    wait_idle(qtbot, window)
    request = window.engine.requests[-1]
    assert [m.role for m in request] == ["user", "assistant", "user"]
    assert request[1].content == window.engine.script.answer
    assert "<think>" not in request[1].content


def test_switching_quantization_reloads_and_keeps_the_conversation(make_window, qtbot, tmp_path):
    window = make_window()
    window.session.send("Before the switch")
    wait_idle(qtbot, window)
    assert window.quant_label.text() == "Q4_K_M"

    q8 = write_fake_gguf(tmp_path / "models" / "fathom-r1-14b.Q8_0.gguf")
    window.store.set("model_path", str(q8))
    window.apply_settings(["model_path"])
    assert window.session.state is SessionState.LOADING
    assert not window.composer.send_button.isEnabled()
    wait_idle(qtbot, window)

    assert [o.model_path for o in window.engine.load_calls][-1] == q8
    assert window.quant_label.text() == "Q8_0"
    assert [m.text for m in window.chat.user_messages()] == ["Before the switch"]
    window.session.send("After the switch")
    wait_idle(qtbot, window)
    assert [m.role for m in window.engine.requests[-1]][-3:] == ["user", "assistant", "user"]


def test_switching_while_generating_stops_the_reply_then_reloads(make_window, qtbot, tmp_path):
    window = make_window(_slow())
    window.session.send("Long one")
    reply = window.chat.assistant_messages()[-1]
    qtbot.waitUntil(lambda: reply.reasoning.tokens > 5, timeout=WAIT_MS)
    q8 = write_fake_gguf(tmp_path / "models" / "fathom-r1-14b.Q8_0.gguf")
    window.store.set("model_path", str(q8))
    window.apply_settings(["model_path"])
    wait_idle(qtbot, window)
    assert window.quant_label.text() == "Q8_0"
    assert _stored(window)[-1].status is MessageStatus.STOPPED


def test_a_bad_model_file_gives_a_message_and_the_app_keeps_running(
    make_window, qtbot, tmp_path, fake_gguf, artifacts
):
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a model", encoding="utf-8")
    window = make_window(settings={"model_path": str(bad)}, load=False)
    window.load_model()
    qtbot.waitUntil(
        lambda: window.session.state is SessionState.NO_MODEL and bool(window.banner.text()),
        timeout=WAIT_MS,
    )
    assert "notes.gguf is not a GGUF model file." in window.banner.text()
    assert "Traceback" not in window.banner.text()
    assert not window.composer.send_button.isEnabled()
    screenshot(window, artifacts, "06-bad-model-file")

    window.store.set("model_path", str(fake_gguf))
    window.apply_settings(["model_path"])
    wait_idle(qtbot, window)
    assert window.session.send("Works now?")
    wait_idle(qtbot, window)


def test_a_bad_replacement_model_falls_back_to_the_previous_one(
    make_window, qtbot, tmp_path, fake_gguf
):
    window = make_window()
    missing = tmp_path / "gone.Q8_0.gguf"
    window.store.set("model_path", str(missing))
    window.apply_settings(["model_path"])
    wait_idle(qtbot, window)
    assert "does not exist" in window.banner.text()
    assert f"Going back to {fake_gguf.name}" in window.banner.text()
    assert window.store.get("model_path") == str(fake_gguf)
    assert window.session.report is not None and window.session.report.model_path == fake_gguf


def test_history_survives_a_restart(make_window, qtbot, tmp_path, artifacts):
    path = tmp_path / "kept.sqlite3"
    first = make_window(history_path=path)
    first.session.send("Remember me")
    wait_idle(qtbot, first)
    first.close()

    second = make_window(history_path=path)
    assert second.sidebar.titles() == ["Remember me"]
    assert [m.text for m in second.chat.user_messages()] == ["Remember me"]
    reply = second.chat.assistant_messages()[-1]
    assert reply.answer.source == second.engine.script.answer
    qtbot.waitUntil(reply.answer.is_rendered)  # a stored answer renders in slices
    assert reply.answer.formulas >= 5
    assert not reply.reasoning.is_expanded()
    assert reply.reasoning.header_text().startswith("Thought for ")
    assert reply.reasoning.text() == second.engine.script.reasoning
    reasoning_tokens = second.engine.count_tokens(second.engine.script.reasoning)
    assert second.meter.usage.reasoning == reasoning_tokens  # the meter shows the last turn
    screenshot(second, artifacts, "07-restored-after-restart")


def test_partial_reply_is_saved_while_streaming(make_window, qtbot, tmp_path):
    path = tmp_path / "live.sqlite3"
    window = make_window(_slow(tokens_per_s=100.0), history_path=path)
    window.session.send("Keep writing")
    reply_id = window.chat.assistant_messages()[-1].message_id
    # Read the file as a crash would leave it (a History would mark the reply interrupted).
    reader = sqlite3.connect(path)

    def saved() -> tuple[str, str]:
        query = "SELECT reasoning, status FROM messages WHERE id = ?"
        # The history's writer thread adds the row a moment after send() returns.
        return reader.execute(query, (reply_id,)).fetchone() or ("", "")

    qtbot.waitUntil(lambda: len(saved()[0] or "") > 40, timeout=WAIT_MS)
    assert saved()[1] == MessageStatus.STREAMING.value
    reader.close()
    window.session.stop()
    wait_idle(qtbot, window)


def test_closing_while_generating_records_a_stopped_reply(make_window, qtbot, tmp_path):
    path = tmp_path / "closing.sqlite3"
    window = make_window(_slow(), history_path=path)
    window.session.send("Going away")
    reply = window.chat.assistant_messages()[-1]
    qtbot.waitUntil(lambda: reply.reasoning.tokens > 5, timeout=WAIT_MS)
    window.close()
    assert window.session.client.thread.isFinished()
    with History(path) as reader:
        (conversation,) = reader.list_conversations()
        assistant = reader.messages(conversation.id)[-1]
    assert assistant.status is MessageStatus.STOPPED
    assert assistant.reasoning


def test_model_output_is_never_html(make_window, qtbot, artifacts):
    hostile = (
        '<b>x</b><script>alert(1)</script> <img src="file:///etc/passwd">'
        " [run](javascript:alert(1))"
    )
    window = make_window(
        FakeEngine(FakeScript(reasoning=hostile + "\n", answer=hostile), tokens_per_s=None)
    )
    window.session.send("<i>not italic</i>")
    wait_idle(qtbot, window)
    reply = window.chat.assistant_messages()[-1]
    shown = reply.answer.toPlainText()
    assert "<b>x</b><script>alert(1)</script>" in shown
    assert '<img src="file:///etc/passwd">' in shown
    assert "[run](javascript:alert(1))" in shown
    assert "\ufffc" not in shown  # no image object made it into the document
    assert "<script>" in reply.reasoning.text()
    assert window.chat.user_messages()[0].label.text() == "<i>not italic</i>"
    assert window.chat.user_messages()[0].label.textFormat() is Qt.TextFormat.PlainText
    screenshot(window, artifacts, "08-html-shown-as-text")


def test_prices_stay_text_and_math_becomes_images(make_window, qtbot):
    answer = (
        "It costs $5 and $10 in total.\n\nThe ratio is \\(\\frac{1}{2}\\), so \\boxed{\\sqrt{2}}."
    )
    window = make_window(FakeEngine(FakeScript(reasoning="ok\n", answer=answer), tokens_per_s=None))
    window.session.send("Prices?")
    wait_idle(qtbot, window)
    shown = window.chat.assistant_messages()[-1].answer.toPlainText()
    assert "It costs $5 and $10 in total." in shown
    assert "\\frac" not in shown and "\\boxed" not in shown and "\\sqrt" not in shown
    assert shown.count("\ufffc") == 2  # two formulas, drawn as images


def test_copy_answer_as_text_and_as_latex(make_window, qtbot):
    window = make_window(
        FakeEngine(FakeScript(reasoning="r\n", answer="So **x** is $x^2$."), tokens_per_s=None)
    )
    window.session.send("Copy me")
    wait_idle(qtbot, window)
    reply = window.chat.assistant_messages()[-1]
    qtbot.mouseClick(reply.copy_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: QGuiApplication.clipboard().text().strip() == "So x is x².")
    qtbot.mouseClick(reply.copy_latex_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == "So **x** is $x^2$."


def test_context_meter_warns_before_the_budget_runs_out(make_window, qtbot, artifacts):
    window = make_window(_slow(tokens_per_s=250.0), settings={"n_ctx": 1024})
    window.session.send("Fill it up")
    qtbot.waitUntil(lambda: window.meter.usage.level is MeterLevel.WARNING, timeout=WAIT_MS)
    assert window.session.state.replying  # the warning comes while there is room left
    assert "⚠ only " in window.meter.label.text()
    wait_idle(qtbot, window)
    usage = window.meter.usage
    assert usage.n_ctx == 1024 and usage.reasoning > 0 and usage.prompt > 0
    assert usage.used == 1024
    assert window.meter.label.text().endswith("⚠ only 0 left")
    reply = window.chat.assistant_messages()[-1]
    assert "the context window is full" in reply.figures.text()
    screenshot(window, artifacts, "09-context-warning")


def test_sidebar_new_rename_search_delete(make_window, qtbot):
    window = make_window()
    window.session.send("About primes")
    wait_idle(qtbot, window)
    window.session.new_conversation()
    assert window.chat.items() == []
    window.session.send("About triangles")
    wait_idle(qtbot, window)
    assert window.sidebar.titles() == ["About triangles", "About primes"]

    primes = window.sidebar.ids()[1]
    window.sidebar.item_for(primes).setText("Prime numbers")  # an in-place rename
    assert window.session.history.conversation(primes).title == "Prime numbers"

    window.sidebar.search.setText("triangles")
    qtbot.waitUntil(lambda: window.sidebar.titles() == ["About triangles"], timeout=WAIT_MS)
    window.sidebar.search.clear()
    qtbot.waitUntil(lambda: len(window.sidebar.titles()) == 2, timeout=WAIT_MS)

    window.session.open_conversation(primes)
    assert [m.text for m in window.chat.user_messages()] == ["About primes"]
    window.session.delete_conversation(primes)
    assert window.sidebar.titles() == ["About triangles"]
    assert window.chat.items() == []


def test_consensus_votes_on_boxed_answers(make_window, qtbot):
    window = make_window()
    window.composer.set_text("Sum of the first 50 odd numbers?")
    assert window.consensus(3)
    wait_idle(qtbot, window)
    reply = window.chat.assistant_messages()[-1]
    assert "Consensus ×3: 2500, 3 of 3 agree (100%)" in reply.figures.text()
    # The panes show the winning sample, as a single reply would be shown.
    script = window.engine.script
    per_sample = window.engine.count_tokens(script.reasoning)
    assert reply.reasoning.header_text().endswith(f" · {per_sample:,} tokens")
    assert reply.reasoning.text() == script.reasoning
    assert reply.answer.source == window.engine.script.answer
    assert len(window.engine.requests) == 3
    assert _stored(window)[-1].stats["consensus"]["votes"] == {"2500": 3}


def test_sending_is_refused_while_a_reply_runs(make_window, qtbot):
    window = make_window(_slow())
    assert window.session.send("one")
    assert not window.session.send("two")
    assert window.composer.stop_button.isVisible()
    window.session.stop()
    wait_idle(qtbot, window)
    assert [m.text for m in window.chat.user_messages()] == ["one"]


def test_interrupted_reply_is_shown_as_interrupted(make_window, qtbot, tmp_path):
    path = tmp_path / "crashed.sqlite3"
    with History(path) as history:
        conversation = history.create_conversation("Crashed")
        history.add_user_message(conversation, "Hello?")
        reply = history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", None)
        history.save_partial(reply, "half a thought", "")
    window = make_window(history_path=path)
    assert "had not finished" in window.banner.text()
    shown = window.chat.assistant_messages()[-1]
    assert "interrupted" in shown.figures.text()
    assert shown.reasoning.text() == "half a thought"


def test_the_window_starts_without_a_model(make_window, qtbot, tmp_path: Path):
    window = make_window(settings={"model_path": None}, load=False)
    window.load_model()
    assert window.session.state is SessionState.NO_MODEL
    assert "Choose a GGUF file in File › Settings" in window.banner.text()


def test_settings_dialog_changes_reload_the_model_and_keep_the_chat(make_window, qtbot):
    from fathom_desktop.gui.settings_dialog import SettingsDialog

    window = make_window()
    window.session.send("Keep me")
    wait_idle(qtbot, window)
    window.open_settings()
    dialog = window.findChild(SettingsDialog)
    assert dialog is not None and dialog.isVisible()
    qtbot.waitUntil(lambda: not dialog.model_list.busy())  # the model's header, read aside
    dialog.editor("n_ctx").setValue(8192)
    assert dialog.apply()
    wait_idle(qtbot, window)
    assert [o.n_ctx for o in window.engine.load_calls] == [16384, 8192]
    assert window.meter.usage.n_ctx == 8192
    assert [m.text for m in window.chat.user_messages()] == ["Keep me"]
    dialog.close()


def test_the_view_follows_the_tail_only_while_you_are_at_the_bottom(qtbot):
    from fathom_desktop.gui.reasoning_pane import ReasoningPane

    pane = ReasoningPane()
    qtbot.addWidget(pane)
    pane.resize(400, 300)
    pane.show()
    bar = pane.body.verticalScrollBar()
    for i in range(60):
        pane.append(f"line {i}\n", i + 1)
    assert bar.maximum() > 0 and bar.value() == bar.maximum()  # following
    bar.setValue(0)  # the reader scrolls up to read
    for i in range(60, 120):
        pane.append(f"line {i}\n", i + 1)
    assert bar.value() == 0
    bar.setValue(bar.maximum())  # back at the bottom: following again
    pane.append("line 120\n", 121)
    assert bar.value() == bar.maximum()


def test_chat_menu_regenerates(make_window, qtbot):
    window = make_window()
    window.session.send("Menu test")
    wait_idle(qtbot, window)
    window.regenerate_action.trigger()
    wait_idle(qtbot, window)
    assert len(window.engine.requests) == 2
    assert _stored(window)[-1].status is MessageStatus.COMPLETE


def test_a_settings_change_reloads_the_model_in_use_when_none_is_configured(
    make_window, qtbot, fake_gguf
):
    # The demo model (or `--model` for one run) is not saved as the configured model; changing
    # the context length must reload it, not leave the window without a model.
    from fathom_desktop.engine.types import LoadOptions

    window = make_window(settings={"model_path": None}, load=False)
    window.load_model(LoadOptions(model_path=fake_gguf))
    wait_idle(qtbot, window)
    window.store.set("n_ctx", 8192)
    window.apply_settings(["n_ctx"])
    wait_idle(qtbot, window)
    assert window.session.state is SessionState.READY
    assert [(o.model_path, o.n_ctx) for o in window.engine.load_calls][-1] == (fake_gguf, 8192)
