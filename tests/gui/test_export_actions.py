"""Export from the window: File › Export conversation… and the sidebar's Export…, both formats,
written where the user chose, and one line in the banner when the file cannot be written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fathom_desktop.export import JSON_FORMAT_NAME, ExportFormat
from fathom_desktop.gui.export_actions import FILTERS, ExportChoice, destination_for
from tests.gui.conftest import wait_idle


def answer_with(choice: ExportChoice | None, asked: list[Path] | None = None):
    def ask(_parent, suggested: Path, _fmt: ExportFormat) -> ExportChoice | None:
        if asked is not None:
            asked.append(suggested)
        return choice

    return ask


def test_the_save_dialogs_answer_decides_name_and_format() -> None:
    markdown, json_ = FILTERS[ExportFormat.MARKDOWN], FILTERS[ExportFormat.JSON]
    assert destination_for("/x/notes", json_) == ExportChoice(
        Path("/x/notes.json"), ExportFormat.JSON
    )
    assert destination_for("/x/notes", markdown) == ExportChoice(
        Path("/x/notes.md"), ExportFormat.MARKDOWN
    )
    # A suffix the user typed wins over the filter; an unknown one is kept as typed.
    assert destination_for("/x/a.md", json_).fmt is ExportFormat.MARKDOWN
    assert destination_for("/x/a.txt", json_) == ExportChoice(Path("/x/a.txt"), ExportFormat.JSON)


def test_file_menu_exports_markdown_with_the_reasoning_folded(
    make_window, qtbot, tmp_path: Path
) -> None:
    window = make_window()
    assert not window.export_action.isEnabled()  # an empty chat has nothing to export
    window.session.send("What is the sum of the first 50 odd numbers?")
    wait_idle(qtbot, window)
    assert window.export_action.isEnabled()
    assert window.export_action.text() == "&Export conversation…"
    asked: list[Path] = []
    target = tmp_path / "exports" / "odd.md"
    window.exporter.ask_destination = answer_with(
        ExportChoice(target, ExportFormat.MARKDOWN), asked
    )
    with qtbot.waitSignal(window.exporter.exported) as done:
        window.export_action.trigger()
    assert done.args == [target]
    # The dialog offered a name taken from the chat's title.
    assert asked[0].suffix == ".md" and asked[0].stem.startswith("What-is-the-sum")
    text = target.read_text(encoding="utf-8")
    assert "## You\n\nWhat is the sum of the first 50 odd numbers?" in text
    reasoning = window.session.history.messages(window.session.conversation_id)[-1].reasoning
    assert reasoning and "<details>\n<summary>Reasoning</summary>" in text
    assert reasoning.strip().splitlines()[0] in text
    assert "\\boxed{2500}" in text.split("</details>", 1)[1]
    assert "Exported to" in window.statusBar().currentMessage()


def test_sidebar_exports_json_of_the_conversation_right_clicked(
    make_window, qtbot, tmp_path: Path
) -> None:
    window = make_window()
    window.session.send("First chat")
    wait_idle(qtbot, window)
    first = window.session.conversation_id
    window.session.new_conversation()
    window.session.send("Second chat")
    wait_idle(qtbot, window)
    target = tmp_path / "first.json"
    window.exporter.ask_destination = answer_with(ExportChoice(target, ExportFormat.JSON))
    item = window.sidebar.item_for(first)
    menu = window.sidebar.context_menu_for(item)
    assert [a.text() for a in menu.actions()] == ["Rename", "Export…", "Delete…"]
    with qtbot.waitSignal(window.exporter.exported):
        menu.actions()[1].trigger()
    document = json.loads(target.read_text(encoding="utf-8"))
    assert document["format"] == JSON_FORMAT_NAME
    assert [m["content"] for m in document["messages"] if m["role"] == "user"] == ["First chat"]
    assert document["messages"][1]["reasoning"]


def test_a_cancelled_dialog_writes_nothing(make_window, qtbot, tmp_path: Path) -> None:
    window = make_window()
    window.session.send("Hello")
    wait_idle(qtbot, window)
    before = sorted(tmp_path.rglob("*"))
    window.exporter.ask_destination = answer_with(None)
    with (
        qtbot.assertNotEmitted(window.exporter.exported),
        qtbot.assertNotEmitted(window.exporter.failed),
    ):
        window.export_action.trigger()
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_a_write_failure_is_one_line_and_leaves_no_file(
    make_window, qtbot, tmp_path: Path, fmt: ExportFormat
) -> None:
    window = make_window()
    window.session.send("Hello")
    wait_idle(qtbot, window)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    window.exporter.ask_destination = answer_with(ExportChoice(blocker / f"x{fmt.suffix}", fmt))
    with qtbot.waitSignal(window.exporter.failed) as failed:
        window.export_action.trigger()
    message = failed.args[0]
    assert message.startswith(f"Could not write {blocker / 'x'}") and "\n" not in message
    assert window.banner.text() == message
    assert blocker.read_text() == "" and not any(tmp_path.glob("*.tmp"))
    # The conversation is untouched.
    assert [m.text for m in window.chat.user_messages()] == ["Hello"]
