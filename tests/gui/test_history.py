"""History in SQLite: conversations and messages survive restarts, edits, and a killed process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fathom_desktop import paths
from fathom_desktop.engine.types import FinishReason, GenerationStats, SamplingParams
from fathom_desktop.history import (
    SCHEMA_VERSION,
    History,
    HistoryError,
    MessageStatus,
    StoreMode,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fathom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(paths.HOME_ENV_VAR, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def history() -> Iterator[History]:
    with History() as h:
        yield h


def _stats() -> GenerationStats:
    return GenerationStats(
        prompt_tokens=12,
        reasoning_tokens=40,
        answer_tokens=8,
        time_to_first_token_s=0.3,
        prompt_tokens_per_s=400.0,
        decode_tokens_per_s=25.0,
        finish_reason=FinishReason.STOP,
    )


def _exchange(history: History, conversation: int, question: str, answer: str) -> int:
    history.add_user_message(conversation, question)
    reply = history.begin_assistant_message(
        conversation, "/m/Fathom-R1-14B-Q4_K_M.gguf", "Q4_K_M", SamplingParams()
    )
    history.finish_assistant_message(
        reply, f"thinking about {question}", answer, _stats(), "complete"
    )
    return reply


def test_history_lives_in_the_user_data_folder_in_wal_mode(fathom_home: Path) -> None:
    with History() as history:
        history.create_conversation("x")
    assert history.path == fathom_home / "data" / "history.sqlite3"
    db = sqlite3.connect(history.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_conversation_survives_a_restart() -> None:
    with History() as history:
        conversation = history.create_conversation("Sums")
        reply = _exchange(history, conversation, "What is 2+2?", "\\boxed{4}")
    with History() as reopened:
        [summary] = reopened.list_conversations()
        assert (summary.title, summary.message_count) == ("Sums", 2)
        user, assistant = reopened.messages(conversation)
    assert (user.role, user.content, user.status) == (
        "user",
        "What is 2+2?",
        MessageStatus.COMPLETE,
    )
    assert assistant.id == reply
    assert assistant.content == "\\boxed{4}"
    assert assistant.reasoning == "thinking about What is 2+2?"
    assert assistant.model_file == "/m/Fathom-R1-14B-Q4_K_M.gguf" and assistant.quant == "Q4_K_M"
    assert assistant.sampling["temperature"] == 0.6 and assistant.sampling["top_p"] == 0.95
    assert assistant.stats["finish_reason"] == "stop" and assistant.stats["answer_tokens"] == 8
    assert assistant.to_chat_message().reasoning == "thinking about What is 2+2?"


def test_list_search_rename_delete(history: History) -> None:
    ticks = iter(range(100))
    history._clock = lambda: float(next(ticks))
    first = history.create_conversation("Geometry")
    _exchange(history, first, "Area of a circle of radius 3?", "9π")
    second = history.create_conversation("Primes")
    _exchange(history, second, "Is 97 prime?", "Yes, 97 is PRIME")
    assert [c.id for c in history.list_conversations()] == [second, first]  # newest first
    assert [c.id for c in history.list_conversations("prime")] == [second]  # any case
    assert [c.id for c in history.list_conversations("CIRCLE")] == [first]  # message text
    assert [c.id for c in history.list_conversations("geo")] == [first]  # title
    assert history.list_conversations("100%") == []  # LIKE wildcards are literal
    third = history.create_conversation("Σύνολα")
    assert [c.id for c in history.list_conversations("σύνολα")] == [third]  # any script's case
    history.delete_conversation(third)
    assert len(history.list_conversations("   ")) == 2

    history.rename_conversation(first, "Circles")
    assert history.conversation(first).title == "Circles"
    history.delete_conversation(second)
    assert [c.id for c in history.list_conversations()] == [first]
    assert history.messages(second) == []
    with pytest.raises(HistoryError, match=f"There is no conversation {second}."):
        history.add_user_message(second, "hello?")


def test_editing_a_message_drops_the_later_ones(history: History) -> None:
    conversation = history.create_conversation("c")
    _exchange(history, conversation, "first", "one")
    _exchange(history, conversation, "second", "two")
    question = history.messages(conversation)[2]
    history.edit_user_message(question.id, "second, rephrased")
    messages = history.messages(conversation)
    assert [m.content for m in messages] == ["first", "one", "second, rephrased"]
    with pytest.raises(HistoryError, match="Only your own messages can be edited."):
        history.edit_user_message(messages[1].id, "rewriting the model")


def test_regenerate_deletes_a_reply_and_what_follows(history: History) -> None:
    conversation = history.create_conversation("c")
    reply = _exchange(history, conversation, "q1", "a1")
    _exchange(history, conversation, "q2", "a2")
    history.delete_from_message(reply)
    assert [m.content for m in history.messages(conversation)] == ["q1"]


def test_stopped_and_failed_replies_keep_their_text(history: History) -> None:
    conversation = history.create_conversation("c")
    history.add_user_message(conversation, "long one")
    reply = history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", {"temperature": 0.6})
    history.save_partial(reply, "step 1", "")
    history.finish_assistant_message(reply, "step 1, step 2", "", None, MessageStatus.STOPPED)
    stored = history.message(reply)
    assert (stored.status, stored.reasoning, stored.stats) == (
        MessageStatus.STOPPED,
        "step 1, step 2",
        None,
    )
    # A finished reply is never overwritten by a late partial save.
    with pytest.raises(HistoryError, match="not a reply that is streaming"):
        history.save_partial(reply, "late", "late")
    with pytest.raises(HistoryError, match="cannot finish as streaming"):
        history.finish_assistant_message(reply, "", "", None, "streaming")


def test_streaming_reply_found_on_open_is_marked_interrupted() -> None:
    with History() as history:
        conversation = history.create_conversation("c")
        history.add_user_message(conversation, "q")
        reply = history.begin_assistant_message(conversation, "m.gguf", None, None)
        history.save_partial(reply, "half a thought", "")
    with History() as reopened:
        assert reopened.recovered_interrupted == 1
        stored = reopened.message(reply)
    assert (stored.status, stored.reasoning) == (MessageStatus.INTERRUPTED, "half a thought")


def test_newer_schema_is_left_alone_and_the_session_says_so(fathom_home: Path) -> None:
    path = paths.history_db()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with History() as history:
        assert history.mode is StoreMode.SCRATCH
        assert "written by a newer Fathom Desktop" in history.notice
        assert "kept only until the app closes" in history.notice
        conversation = history.create_conversation("this session")
        assert [c.id for c in history.list_conversations()] == [conversation]
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_closed_history_says_so(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3")
    history.close()
    with pytest.raises(HistoryError, match="is closed"):
        history.create_conversation("late")


# The child process: earlier messages complete, then a reply that streams "forever", saving its
# partial text the way the app does, until the test kills it.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from fathom_desktop.history import History

    history = History()
    conversation = history.create_conversation("killed mid-stream")
    for i in range(3):
        history.add_user_message(conversation, f"question {i}")
        reply = history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", {"seed": i})
        history.finish_assistant_message(
            reply, f"reasoning {i}", f"answer {i}", {"n": i}, "complete"
        )
    history.add_user_message(conversation, "the last question")
    reply = history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", {"seed": 9})
    reasoning = ""
    tokens = 0
    last_save = time.monotonic()
    while True:
        reasoning += f"token{tokens} "
        tokens += 1
        if time.monotonic() - last_save >= 0.05:
            history.save_partial(reply, reasoning, "")
            # Said to be saved only once it is in the file.
            assert history.flush(10.0)
            last_save = time.monotonic()
            print(tokens, flush=True)
        time.sleep(0.002)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_stream_loses_nothing_but_the_last_moments(fathom_home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        # Wait for a few partial saves, then kill without any chance to clean up.
        saved_at = [int(child.stdout.readline()) for _ in range(3)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    with History() as history:
        assert history.recovered_interrupted == 1
        [conversation] = history.list_conversations()
        messages = history.messages(conversation.id)
    assert len(messages) == 8
    for i in range(3):
        question, answer = messages[2 * i], messages[2 * i + 1]
        assert (question.content, question.status) == (f"question {i}", MessageStatus.COMPLETE)
        assert (answer.reasoning, answer.content) == (f"reasoning {i}", f"answer {i}")
        assert answer.status == MessageStatus.COMPLETE and answer.sampling == {"seed": i}
    assert messages[6].content == "the last question"
    partial = messages[7]
    assert partial.status == MessageStatus.INTERRUPTED
    # At least everything up to the last save the child reported is there, in order.
    kept = partial.reasoning.split()
    assert len(kept) >= saved_at[-1]
    assert kept == [f"token{n}" for n in range(len(kept))]
