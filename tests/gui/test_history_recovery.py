"""A history file in a bad state still opens: damaged files are moved aside untouched and their
readable rows rescued; read-only and locked files are read in place; nothing typed is lost."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fathom_desktop.history import History, MessageStatus, StoreMode
from tests.gui.conftest import wait_idle

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PAGE_SIZE = 4096
CONVERSATIONS = 40


def _fill(path: Path, conversations: int = CONVERSATIONS) -> Path:
    """A history of `conversations` exchanges, long enough to span dozens of pages."""
    with History(path) as history:
        for i in range(conversations):
            conversation = history.create_conversation(f"Conversation {i}")
            history.add_user_message(conversation, f"question {i} " + "q" * 1500)
            reply = history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", None)
            history.finish_assistant_message(
                reply, "r" * 1500, f"\\boxed{{{i}}}", None, MessageStatus.COMPLETE
            )
    assert not Path(f"{path}-wal").exists()  # everything is in the main file
    return path


def _side_files(path: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in path.parent.iterdir()
        if p.name.startswith(path.name) and p.is_file()
    }


def _assert_moved_aside(history: History, path: Path, original: bytes) -> Path:
    moved = history.moved_to
    assert moved is not None and moved.parent == path.parent
    assert moved.name.startswith("history.") and moved.name.endswith(".unreadable.sqlite3")
    assert moved.read_bytes() == original  # byte for byte: never modified
    assert str(moved) in history.notice and "\n" not in history.notice
    return moved


def test_a_corrupt_page_is_moved_aside_and_the_readable_conversations_are_kept(tmp_path):
    path = _fill(tmp_path / "history.sqlite3")
    data = bytearray(path.read_bytes())
    pages = len(data) // PAGE_SIZE
    middle = pages // 2
    garbage = random.Random(14).randbytes(PAGE_SIZE)
    data[middle * PAGE_SIZE : (middle + 1) * PAGE_SIZE] = garbage
    path.write_bytes(bytes(data))
    original = path.read_bytes()

    with History(path) as history:
        assert history.mode is StoreMode.IN_PLACE
        moved = _assert_moved_aside(history, path, original)
        assert "could not be read" in history.notice
        kept = history.list_conversations()
        assert len(kept) == CONVERSATIONS  # their table lives on other pages
        messages_kept = sum(c.message_count for c in kept)
        # One page of 4 KiB holds at most a couple of these 1.5 KiB messages.
        assert 2 * CONVERSATIONS - 3 <= messages_kept < 2 * CONVERSATIONS
        assert f"{messages_kept} messages recovered" in history.notice
        for summary in kept:
            i = int(summary.title.split()[-1])
            messages = history.messages(summary.id)
            for message in messages:
                if message.role == "user":
                    assert message.content == f"question {i} " + "q" * 1500
                else:
                    assert (message.content, message.reasoning) == (f"\\boxed{{{i}}}", "r" * 1500)
        # The fresh history is the user's history now, and it takes new messages.
        fresh = history.create_conversation("after the rescue")
        history.add_user_message(fresh, "still here")
    assert moved.read_bytes() == original
    # Nothing was made beside it: it had no log, and reading it left none.
    assert [p.name for p in tmp_path.iterdir() if "unreadable" in p.name] == [moved.name]
    with History(path) as reopened:
        assert reopened.notice is None
        assert reopened.list_conversations()[0].title == "after the rescue"
        assert len(reopened.list_conversations()) == len(kept) + 1


def test_random_bytes_are_moved_aside_and_a_fresh_history_starts(tmp_path):
    path = tmp_path / "history.sqlite3"
    original = random.Random(7).randbytes(64 * 1024)
    path.write_bytes(original)
    with History(path) as history:
        _assert_moved_aside(history, path, original)
        assert "0 conversations and 0 messages recovered" in history.notice
        assert history.list_conversations() == []
        history.create_conversation("new")
    with History(path) as reopened:
        assert [c.title for c in reopened.list_conversations()] == ["new"]


def test_a_file_that_is_not_a_database_is_moved_aside_with_its_wal(tmp_path):
    path = tmp_path / "history.sqlite3"
    original = b"this is not sqlite\n" * 100
    path.write_bytes(original)
    wal = Path(f"{path}-wal")
    wal.write_bytes(b"a stray write-ahead log")
    with History(path) as history:
        moved = _assert_moved_aside(history, path, original)
        assert "file is not a database" in history.notice
    assert Path(f"{moved}-wal").read_bytes() == b"a stray write-ahead log"


@pytest.fixture
def restricted_dir() -> Iterator[Path]:
    """A folder outside pytest's private one, so that a process without root's rights sees it."""
    folder = Path(tempfile.mkdtemp(prefix="fathom-history-test-"))
    folder.chmod(0o755)
    yield folder
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(folder)


# Opens the history in a child that is subject to file permissions (root is not: the child
# runs without CAP_DAC_OVERRIDE), writes to it, and reports what it saw as JSON.
_OPEN_AND_WRITE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from fathom_desktop.history import store
    store.CLOSE_TIMEOUT_S = 0.5
    history = store.History(Path(sys.argv[1]))
    before = [c.title for c in history.list_conversations()]
    conversation = history.create_conversation("typed while read-only")
    message = history.add_user_message(conversation, "do not lose me")
    shown = [m.content for m in history.messages(conversation)]
    flushed = history.flush(0.5)
    unsaved = sorted(history.unsaved_message_ids())
    history.close()
    print(json.dumps({
        "mode": history.mode.value, "notice": history.notice, "before": before, "shown": shown,
        "flushed": flushed, "unsaved": unsaved, "message": message,
        "unsaved_at_close": history.unsaved_at_close,
        "unsaved_file": str(history.unsaved_file) if history.unsaved_file else None,
    }))
    """
)


def _as_user(path: Path) -> dict:
    command = [sys.executable, "-c", _OPEN_AND_WRITE, str(path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: no way to drop root's rights")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_history_is_read_in_place_and_new_messages_are_kept(restricted_dir, what):
    path = _fill(restricted_dir / "history.sqlite3", conversations=3)
    before = _side_files(path)
    path.chmod(0o444)
    if what == "folder":
        restricted_dir.chmod(0o555)
    seen = _as_user(path)
    assert seen["mode"] == StoreMode.READ_ONLY.value
    assert "read-only" in seen["notice"] and "kept in memory" in seen["notice"]
    assert seen["before"] == ["Conversation 2", "Conversation 1", "Conversation 0"]
    assert seen["shown"] == ["do not lose me"]  # the window still shows what was typed
    assert not seen["flushed"] and seen["message"] in seen["unsaved"]
    assert seen["unsaved_at_close"] == 2  # the new conversation and the message
    after = _side_files(path)
    assert after[path.name] == before[path.name]  # nothing moved, nothing written
    assert not after.get(f"{path.name}-wal")  # SQLite may leave an empty log beside it
    if what == "folder":
        assert seen["unsaved_file"] is None  # nowhere to keep them: the app says they are lost
        return
    # What waited at quit is kept beside the history, and shown again at the next start.
    kept = Path(seen["unsaved_file"])
    assert kept.parent == restricted_dir and kept.exists()
    again = _as_user(path)
    assert "2 changes that could not be saved when the app last closed" in again["notice"]
    assert again["before"][0] == "typed while read-only"
    assert again["unsaved_at_close"] == 4 and not kept.exists()  # one file now holds all four
    assert Path(again["unsaved_file"]).exists()


def test_locked_at_start_reads_in_place_and_saves_once_the_lock_is_gone(tmp_path):
    path = _fill(tmp_path / "history.sqlite3", conversations=2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
    try:
        with History(path) as history:
            assert history.mode is StoreMode.READ_ONLY
            assert "in use by another program" in history.notice
            assert history.moved_to is None
            assert len(history.list_conversations()) == 2
            conversation = history.create_conversation("while locked")
            message = history.add_user_message(conversation, "kept")
            assert not history.flush(0.3)
            assert message in history.unsaved_message_ids()
            other.execute("COMMIT")
            assert history.flush(10.0)
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    with History(path) as reopened:
        [latest, *_] = reopened.list_conversations()
        assert latest.title == "while locked"
        assert [m.content for m in reopened.messages(latest.id)] == ["kept"]


def test_locked_exclusively_at_start_runs_on_a_scratch_history(tmp_path):
    path = _fill(tmp_path / "history.sqlite3", conversations=2)
    original = path.read_bytes()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE conversations SET title = title")
    try:
        with History(path) as history:
            assert history.mode is StoreMode.SCRATCH
            assert "locked by another program" in history.notice
            assert "kept only until the app closes" in history.notice
            conversation = history.create_conversation("scratch")
            assert history.messages(conversation) == []
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert path.read_bytes() == original


def test_the_window_names_where_the_damaged_history_went(make_window, qtbot, tmp_path):
    from fathom_desktop.app import announce_history

    path = _fill(tmp_path / "history.sqlite3", conversations=3)
    path.write_bytes(b"\0" * 100 + path.read_bytes()[100:])  # the header is gone
    window = make_window(history_path=path)
    announce_history(window, window.session.history)
    text = window.banner.text()
    assert text.startswith("The history could not be read") and "\n" not in text
    assert str(window.session.history.moved_to) in text
    assert window.sidebar.ids() == []  # a fresh history, and the window works on it
    assert window.session.send("What is 2+2?")
    wait_idle(qtbot, window)
    assert len(window.sidebar.ids()) == 1


def test_a_history_the_user_may_not_read_is_left_alone_for_a_scratch_one(restricted_dir):
    path = _fill(restricted_dir / "history.sqlite3", conversations=2)
    original = path.read_bytes()
    path.chmod(0o000)
    seen = _as_user(path)
    assert seen["mode"] == StoreMode.SCRATCH.value
    assert "cannot be read" in seen["notice"] and "kept only until the app closes" in seen["notice"]
    assert seen["before"] == [] and seen["shown"] == ["do not lose me"]
    assert seen["flushed"]  # the scratch history takes writes
    path.chmod(0o644)
    assert path.read_bytes() == original
    assert sorted(p.name for p in restricted_dir.iterdir()) == [path.name]
