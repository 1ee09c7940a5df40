"""Exporting a conversation: Markdown with folded reasoning, and JSON that round-trips."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fathom_desktop.export import (
    JSON_FORMAT_NAME,
    ExportError,
    ExportFormat,
    export_conversation,
    suggested_file_name,
    to_markdown,
)
from fathom_desktop.history import History, MessageStatus

REASONING = "Let me add.\n\n2 + 2 = 4, and a tricky </details> tag in the thoughts."


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    h = History(tmp_path / "history.sqlite3", clock=lambda: 1_780_000_000.0)
    yield h
    h.close()


@pytest.fixture
def conversation(history: History) -> int:
    conversation = history.create_conversation("Sums & <b>tags</b>")
    history.add_user_message(conversation, "What is 2+2?")
    reply = history.begin_assistant_message(
        conversation, "/models/Fathom-R1-14B-Q4_K_M.gguf", "Q4_K_M", {"temperature": 0.6}
    )
    history.finish_assistant_message(
        reply, REASONING, "The answer is $\\boxed{4}$.", {"answer_tokens": 9}, "complete"
    )
    history.add_user_message(conversation, "And 3+3?")
    stopped = history.begin_assistant_message(conversation, "m.gguf", None, None)
    history.finish_assistant_message(stopped, "Adding 3", "", None, MessageStatus.STOPPED)
    return conversation


def test_markdown_folds_reasoning_and_keeps_the_answer(
    history: History, conversation: int, tmp_path: Path
) -> None:
    path = export_conversation(history, conversation, tmp_path / "out.md")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Sums & <b>tags</b>\n")
    assert text.count("<details>") == 2 and text.count("\n</details>\n") == 2
    assert "<summary>Reasoning</summary>" in text
    # The reasoning's own "</details>" cannot close the fold early.
    assert "tricky &lt;/details> tag" in text
    body = text.split("## Fathom", 1)[1]
    assert body.index("</details>") < body.index("The answer is $\\boxed{4}$.")
    assert "*Fathom-R1-14B-Q4_K_M.gguf, Q4_K_M*" in text
    assert "## You\n\nWhat is 2+2?" in text and "## You\n\nAnd 3+3?" in text
    assert "Stopped before the end." in text


def test_markdown_of_a_reply_without_reasoning_has_no_fold(history: History) -> None:
    conversation = history.create_conversation("")
    reply = history.begin_assistant_message(conversation, None, None, None)
    history.finish_assistant_message(reply, "", "Just an answer.", None, "complete")
    text = to_markdown(history.conversation(conversation), history.messages(conversation))
    assert "<details>" not in text
    assert text.startswith("# Untitled conversation\n") and "Just an answer." in text


def test_json_keeps_everything(history: History, conversation: int, tmp_path: Path) -> None:
    path = export_conversation(history, conversation, tmp_path / "out.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == JSON_FORMAT_NAME
    assert document["title"] == "Sums & <b>tags</b>"
    assert [m["role"] for m in document["messages"]] == ["user", "assistant", "user", "assistant"]
    reply = document["messages"][1]
    assert reply["reasoning"] == REASONING
    assert reply["content"] == "The answer is $\\boxed{4}$."
    assert reply["quant"] == "Q4_K_M" and reply["sampling"] == {"temperature": 0.6}
    assert reply["stats"] == {"answer_tokens": 9}
    assert document["messages"][3]["status"] == "stopped"
    assert reply["created_at"].startswith("2026-05-28T")


def test_format_comes_from_the_suffix_or_is_refused(
    history: History, conversation: int, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match=r"Cannot tell the export format from 'out.txt'"):
        export_conversation(history, conversation, tmp_path / "out.txt")
    path = export_conversation(history, conversation, tmp_path / "out.txt", ExportFormat.JSON)
    assert json.loads(path.read_text())["format"] == JSON_FORMAT_NAME


def test_write_failure_is_one_line_and_leaves_nothing(
    history: History, conversation: int, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ExportError) as failed:
        export_conversation(history, conversation, blocker / "out.md")
    assert str(failed.value).startswith("Could not write") and "\n" not in str(failed.value)
    assert sorted(tmp_path.rglob("*")) == before


def test_suggested_file_name(history: History, conversation: int) -> None:
    summary = history.conversation(conversation)
    assert suggested_file_name(summary, ExportFormat.MARKDOWN) == "Sums-btagsb.md"
