"""The empty chat's welcome view: the model in use, what the demo can and cannot do, three prompts
that go into the message box when clicked, and where to get Fathom-R1-14B."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt

from fathom_desktop.gui.welcome import DEMO_PROMPTS, FATHOM_PROMPTS, FATHOM_REPO
from tests.gui.conftest import wait_idle, write_fake_gguf

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_an_empty_chat_welcomes_with_the_model_and_examples(make_window, qtbot) -> None:
    window = make_window()
    welcome = window.chat.welcome
    assert welcome.isVisible() and window.chat.items() == []
    assert welcome.model_label.text() == (
        "Model: fathom-r1-14b.Q4_K_M.gguf (Q4_K_M, GPU 49/49 layers)"
    )
    assert welcome.prompts() == list(FATHOM_PROMPTS)
    assert FATHOM_REPO in welcome.get_label.text()
    assert "Open or download a model…" in welcome.get_label.text()
    ARTIFACTS.mkdir(exist_ok=True)
    assert window.grab().save(str(ARTIFACTS / "welcome_fathom.png"))


def test_a_clicked_example_waits_in_the_message_box(make_window, qtbot) -> None:
    window = make_window()
    qtbot.mouseClick(window.chat.welcome.prompt_buttons[1], Qt.MouseButton.LeftButton)
    assert window.composer.text() == FATHOM_PROMPTS[1]
    assert window.composer.edit.hasFocus()
    # Nothing was sent: no conversation, no message, the welcome still shown.
    assert window.session.conversation_id is None
    assert window.session.history.list_conversations() == []
    assert window.chat.items() == [] and window.chat.welcome.isVisible()


def test_the_welcome_leaves_with_the_first_message_and_returns_for_a_new_chat(
    make_window, qtbot
) -> None:
    window = make_window()
    window.session.send("What is 2+2?")
    assert not window.chat.welcome.isVisible()
    wait_idle(qtbot, window)
    first = window.session.conversation_id
    window.session.new_conversation()
    assert window.chat.welcome.isVisible()
    window.session.open_conversation(first)
    assert not window.chat.welcome.isVisible()


def test_the_demo_says_what_it_can_and_cannot_do(make_window, qtbot, tmp_path: Path) -> None:
    demo = write_fake_gguf(tmp_path / "models" / "fathom-tiny-f5201b9627dc-Q8_0.gguf")
    window = make_window(settings={"model_path": str(demo)})
    welcome = window.chat.welcome
    assert welcome.model_label.text().startswith("Model: fathom-tiny, the built-in demo (Q8_0")
    about = welcome.about_label.text()
    assert "grade-school arithmetic word problems" in about and "<think>" in about
    assert "cannot do anything else" in about
    assert welcome.prompts() == list(DEMO_PROMPTS)
    ARTIFACTS.mkdir(exist_ok=True)
    assert window.grab().save(str(ARTIFACTS / "welcome_demo.png"))


def test_without_a_model_it_says_so_and_where_to_get_one(make_window, qtbot) -> None:
    window = make_window(settings={"model_path": None}, load=False)
    window.load_model()
    welcome = window.chat.welcome
    assert welcome.model_label.text() == "No model is loaded yet."
    assert not welcome.about_label.isVisible()
    assert FATHOM_REPO in welcome.get_label.text() and welcome.get_button.isVisible()


def test_open_or_download_a_model_offers_the_first_run_ways(
    make_window, qtbot, tiny_gguf_f32: Path
) -> None:
    from fathom_desktop.gui.first_run import FirstRunDialog

    window = make_window()
    before = window.store.get("model_path")
    window.chat.welcome.get_button.click()
    dialog = window.findChild(FirstRunDialog)
    assert dialog is not None and dialog.isVisible()
    assert dialog.windowTitle() == "Open or download a model"
    assert dialog.quit_button.text() == "Cancel"  # it closes the dialog, not the app
    assert dialog.download_button.isVisible() and dialog.open_button.isVisible()
    dialog.quit_button.click()
    assert window.isVisible() and window.store.get("model_path") == before

    # Choosing a GGUF makes it the model and loads it.
    window.open_model_dialog()
    dialog = next(d for d in window.findChildren(FirstRunDialog) if d.isVisible())
    dialog.open_gguf(tiny_gguf_f32)  # its header is read in the background
    qtbot.waitUntil(lambda: window.store.get("model_path") == str(tiny_gguf_f32))
    qtbot.waitUntil(lambda: window.engine.load_calls[-1].model_path == tiny_gguf_f32)
