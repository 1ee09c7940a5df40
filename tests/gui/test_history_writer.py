"""Writes never wait for the disk: a history locked while the app runs keeps every change in
order, shows it to reads at once, and writes it when the lock goes."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fathom_desktop.gui.history_reports import HistoryReports
from fathom_desktop.history import History, MessageStatus, WriteReport, WriteStatus, store
from fathom_desktop.history.store import WRITE_BUSY_TIMEOUT_S
from tests.gui.conftest import WAIT_MS, screenshot, wait_idle

# A call that waited for the lock would take the writer's busy timeout at least; the old
# synchronous history waited 10 s. Half the busy timeout leaves room for a loaded machine.
NO_WAIT_S = WRITE_BUSY_TIMEOUT_S / 2


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "history.sqlite3"
    History(path).close()
    return path


@pytest.fixture
def lock(path: Path) -> Iterator[Callable[[], None]]:
    """Another program takes the write lock now; calling the fixture's value lets it go."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        if other.in_transaction:
            other.execute("COMMIT")

    yield release
    release()
    other.close()


def _timed(calls: list[float], function: Callable, *args: object) -> object:
    start = time.perf_counter()
    result = function(*args)
    calls.append(time.perf_counter() - start)
    return result


def test_locked_while_running_every_call_returns_at_once_and_nothing_is_lost(path, lock):
    reports: list[WriteReport] = []
    calls: list[float] = []
    with History(path) as history:
        history.add_listener(reports.append)
        conversation = _timed(calls, history.create_conversation, "Sums")
        question = _timed(calls, history.add_user_message, conversation, "What is 2+2?")
        reply = _timed(calls, history.begin_assistant_message, conversation, "m.gguf", None, None)
        for n in range(20):
            _timed(calls, history.save_partial, reply, "thinking " * n, "")
        _timed(calls, history.finish_assistant_message, reply, "thought", "4", None, "complete")
        shown = _timed(calls, history.messages, conversation)
        listed = _timed(calls, history.list_conversations)
        assert max(calls) < NO_WAIT_S, f"a call waited {max(calls):.3f} s"
        # Reads already show every change, saved or not.
        assert [(m.content, m.status) for m in shown] == [
            ("What is 2+2?", MessageStatus.COMPLETE),
            ("4", MessageStatus.COMPLETE),
        ]
        assert [(c.title, c.message_count) for c in listed] == [("Sums", 2)]
        # Saving has stalled, the listener heard why, and the changes wait in order.
        deadline = time.monotonic() + 10
        while not reports and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reports[0].status is WriteStatus.WAITING
        assert "kept and saved as soon as the history can be written" in reports[0].message
        assert {question, reply} <= history.unsaved_message_ids()
        # Twenty partial saves in a row wait as one: a stalled disk does not grow memory.
        assert len(history._writer.pending()) <= 5
        lock()
        assert history.flush(10.0)
        assert reports[-1].status is WriteStatus.SAVED
        assert history.unsaved_message_ids() == frozenset()
    with History(path) as reopened:
        stored = reopened.messages(conversation)
    assert [(m.id, m.content, m.reasoning) for m in stored] == [
        (question, "What is 2+2?", None),
        (reply, "4", "thought"),
    ]


def test_reads_lay_waiting_edits_renames_and_deletions_over_the_file(path, lock):
    with History(path) as history:
        ticks = iter(range(1, 100))
        history._clock = lambda: float(next(ticks))
        first = history.create_conversation("Geometry")
        second = history.create_conversation("Primes")
        history.add_user_message(first, "circle area?")
        old_reply = history.begin_assistant_message(first, "m.gguf", None, None)
        history.finish_assistant_message(old_reply, "", "9π", None, "complete")
        question = history.add_user_message(second, "is 97 prime?")
        history.rename_conversation(first, "Circles")
        history.delete_from_message(old_reply)
        history.edit_user_message(question, "is 91 prime?")
        third = history.create_conversation("Gone")
        history.delete_conversation(third)

        def seen() -> tuple:
            return (
                [(c.title, c.message_count) for c in history.list_conversations()],
                [c.id for c in history.list_conversations("91")],
                [c.id for c in history.list_conversations("circles")],
                [m.content for m in history.messages(first)],
            )

        expected = ([("Primes", 1), ("Circles", 1)], [second], [first], ["circle area?"])
        assert seen() == expected
        with pytest.raises(Exception, match=f"There is no conversation {third}"):
            history.conversation(third)
        lock()
        assert history.flush(10.0)
        assert seen() == expected  # the file now says the same


def test_the_window_keeps_chatting_on_a_locked_history_and_says_so(
    make_window, qtbot, path, lock, artifacts
):
    from fathom_desktop.app import announce_history

    window = make_window(history_path=path)
    announce_history(window, window.session.history)
    threads: list[threading.Thread] = []
    window.findChild(HistoryReports).report.connect(
        lambda _report: threads.append(threading.current_thread())
    )
    window.session.send("What is 17 + 25?")
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: "kept and saved as soon" in window.banner.text(), timeout=WAIT_MS)
    reply = window.chat.assistant_messages()[-1]
    assert reply.answer.source  # the reply streamed and finished as usual
    screenshot(window, artifacts, "history-locked-while-running")
    lock()
    qtbot.waitUntil(lambda: "now saved" in window.banner.text(), timeout=WAIT_MS)
    assert threads and set(threads) == {threading.main_thread()}  # widgets are safe to touch
    with History(path) as reader:
        [conversation] = reader.list_conversations()
        user, assistant = reader.messages(conversation.id)
    assert user.content == "What is 17 + 25?"
    assert (assistant.content, assistant.status) == (reply.answer.source, MessageStatus.COMPLETE)


def test_a_change_the_file_refuses_for_good_is_reported_and_the_rest_go_on(path):
    reports: list[WriteReport] = []
    with History(path) as history:
        history.add_listener(reports.append)
        conversation = history.create_conversation("deleted behind the app's back")
        assert history.flush(10.0)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("PRAGMA foreign_keys=ON")
        other.execute("BEGIN EXCLUSIVE")
        orphan = history.add_user_message(conversation, "orphan")  # waits for the lock
        # Another program deletes the conversation; the waiting message's foreign key can
        # never be met, and retrying cannot fix that.
        other.execute("DELETE FROM conversations WHERE id = ?", (conversation,))
        other.execute("COMMIT")
        other.close()
        later = history.create_conversation("later")
        assert history.flush(10.0)
        dropped = [r for r in reports if r.status is WriteStatus.DROPPED]
        assert len(dropped) == 1 and "Could not save your message" in dropped[0].message
        assert dropped[0].message_id == orphan  # the window can give its text back
        assert [c.id for c in history.list_conversations()] == [later]


def test_changes_still_waiting_at_quit_are_kept_and_saved_at_the_next_start(path, monkeypatch):
    monkeypatch.setattr(store, "CLOSE_TIMEOUT_S", 0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    history = History(path)
    conversation = history.create_conversation("typed before quitting")
    history.add_user_message(conversation, "keep me")
    reply = history.begin_assistant_message(conversation, "m.gguf", None, {"seed": 1})
    history.finish_assistant_message(reply, "thought", "kept too", None, "stopped")
    # Meanwhile the other program adds a conversation of its own, with the id this one took.
    other.execute(
        "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (?, 'theirs', 0, 0)",
        (conversation,),
    )
    history.close()  # the lock never went: nothing could be written
    other.execute("COMMIT")
    other.close()
    assert history.unsaved_at_close == 4
    kept = history.unsaved_file
    assert kept is not None and kept.parent == path.parent and kept.suffix == ".json"

    with History(path) as reopened:
        assert "4 changes that could not be saved when the app last closed" in reopened.notice
        assert reopened.flush(10.0)
        titles = {c.title: c.id for c in reopened.list_conversations()}
        assert set(titles) == {"theirs", "typed before quitting"}
        mine = reopened.messages(titles["typed before quitting"])
        assert [(m.role, m.content, m.status) for m in mine] == [
            ("user", "keep me", MessageStatus.COMPLETE),
            ("assistant", "kept too", MessageStatus.STOPPED),
        ]
        assert mine[1].sampling == {"seed": 1}
    assert not kept.exists()  # saved, so no longer kept aside
    with History(path) as again:
        assert again.notice is None and len(again.list_conversations()) == 2


@pytest.mark.parametrize("how", ["Enter", "consensus"])
def test_a_message_the_history_cannot_take_stays_in_the_composer(
    make_window, qtbot, path, monkeypatch, how
):
    from PySide6.QtCore import Qt

    from fathom_desktop.history import HistoryError

    window = make_window(history_path=path)
    history = window.session.history

    def unreadable(*_args: object) -> int:
        # What a read of a damaged or vanished file raises (store.History._reading).
        raise HistoryError(f"Could not read the history at {path}: disk I/O error.")

    monkeypatch.setattr(history, "add_user_message", unreadable)
    qtbot.keyClicks(window.composer.edit, "Is 91 prime?")
    if how == "Enter":
        qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    else:
        window.consensus(3)
    qtbot.waitUntil(lambda: "disk I/O error" in window.banner.text(), timeout=WAIT_MS)
    assert window.composer.text() == "Is 91 prime?"  # nothing typed is lost
    assert not window.chat.assistant_messages()
    # Once the history reads again, the same Enter sends it, and the composer empties.
    monkeypatch.undo()
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    assert window.composer.text() == ""
    with History(path) as reader:
        [conversation] = reader.list_conversations()
        assert reader.messages(conversation.id)[0].content == "Is 91 prime?"
