"""Whatever the user does while the history file is locked, the window reads exactly what it
would read from a file that took every write at once, and the file ends up the same."""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fathom_desktop.history import History, MessageStatus, store

WORDS = st.sampled_from(["prime", "circle", "Sum", "area", "ok", "ΣΠ", ""])
TEXTS = st.lists(WORDS, max_size=3).map(" ".join)
ACTIONS = (
    "create",
    "add_user",
    "begin_reply",
    "save_partial",
    "finish",
    "edit",
    "delete_from",
    "rename",
    "delete_conversation",
)


def _clock():
    ticks = itertools.count(1)
    return lambda: float(next(ticks))


def _everything(history: History) -> tuple:
    conversations = history.list_conversations()
    return (
        conversations,
        [c.id for c in history.list_conversations("prime")],
        [c.id for c in history.list_conversations("σπ")],
        {c.id: history.messages(c.id) for c in conversations},
    )


def _act(history: History, action: str, choice: int, text: str, status: MessageStatus) -> None:
    conversations = [c.id for c in history.list_conversations()]
    messages = [m for c in conversations for m in history.messages(c)]
    streaming = [m.id for m in messages if m.status is MessageStatus.STREAMING]
    users = [m.id for m in messages if m.role == "user"]
    replies = [m.id for m in messages if m.role == "assistant"]

    def pick(ids: list[int]) -> int | None:
        return sorted(ids)[choice % len(ids)] if ids else None

    if action == "create":
        history.create_conversation(text)
    elif (conversation := pick(conversations)) is None:
        return
    elif action == "add_user":
        history.add_user_message(conversation, text)
    elif action == "begin_reply":
        history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", {"seed": choice})
    elif action == "rename":
        history.rename_conversation(conversation, text)
    elif action == "delete_conversation":
        history.delete_conversation(conversation)
    elif action == "save_partial" and (reply := pick(streaming)) is not None:
        history.save_partial(reply, f"thinking {text}", text)
    elif action == "finish" and (reply := pick(replies)) is not None:
        history.finish_assistant_message(reply, "thought", text, {"n": choice}, status)
    elif action == "edit" and (message := pick(users)) is not None:
        history.edit_user_message(message, text)
    elif action == "delete_from" and (message := pick([m.id for m in messages])) is not None:
        history.delete_from_message(message)


STEPS = st.lists(
    st.tuples(
        st.sampled_from(ACTIONS),
        st.integers(0, 50),
        TEXTS,
        st.sampled_from([MessageStatus.COMPLETE, MessageStatus.STOPPED, MessageStatus.ERROR]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_a_locked_history_reads_as_if_every_write_had_landed(steps) -> None:
    # A failing example closes with the lock still held: don't wait long for it.
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
        patch.setattr(store, "CLOSE_TIMEOUT_S", 0.05)
        free_path, locked_path = Path(folder) / "free.sqlite3", Path(folder) / "locked.sqlite3"
        History(locked_path).close()
        other = sqlite3.connect(locked_path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with (
                History(free_path, clock=_clock()) as free,
                History(locked_path, clock=_clock()) as locked,
            ):
                for action, choice, text, status in steps:
                    _act(free, action, choice, text, status)
                    _act(locked, action, choice, text, status)
                    assert free.flush(10.0)
                    assert _everything(locked) == _everything(free)
                other.execute("COMMIT")
                assert locked.flush(10.0)
                assert locked.unsaved_message_ids() == frozenset()
                assert _everything(locked) == _everything(free)
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        # And the files say the same once both are closed.
        with History(free_path) as free, History(locked_path) as locked:
            assert _everything(locked) == _everything(free)
