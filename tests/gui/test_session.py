"""ChatSession without a window: the scripted engine, the signals it emits, the history it keeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fathom_desktop.engine.scripted import Crash, FakeEngine, FakeScript
from fathom_desktop.engine.types import FATHOM_EVAL_INSTRUCTION, LoadOptions
from fathom_desktop.gui.session import ChatSession
from fathom_desktop.gui.session_types import (
    EngineFailure,
    ReplyEnded,
    ReplyText,
    SessionState,
)
from fathom_desktop.history import History, MessageStatus
from fathom_desktop.settings import SettingsStore
from tests.gui.conftest import WAIT_MS

REASONING = "".join(f"Step {i}: the case n = {i} holds.\n" for i in range(200))
ANSWER = "Adding the cases up gives\n\n$$\\sum_{k=1}^{50} (2k-1) = 2500,$$\n\nso \\boxed{2500}."
LONG_ANSWER = "".join(f"Case {i} adds {2 * i + 1}.\n\n" for i in range(100)) + ANSWER


class Recorder:
    """Everything the session told its window, in order."""

    def __init__(self, session: ChatSession) -> None:
        self.states: list[SessionState] = []
        self.texts: list[ReplyText] = []
        self.ended: list[ReplyEnded] = []
        self.failures: list[EngineFailure] = []
        self.load_failures: list[str] = []
        session.state_changed.connect(self.states.append)
        session.reply_text.connect(self.texts.append)
        session.reply_finished.connect(self.ended.append)
        session.engine_failed.connect(self.failures.append)
        session.load_failed.connect(self.load_failures.append)

    def shown(self) -> tuple[str, str]:
        """The reasoning and answer text the window was given to show."""
        return "".join(t.reasoning for t in self.texts), "".join(t.answer for t in self.texts)


@pytest.fixture
def make_session(
    qtbot, tmp_path: Path, fake_gguf: Path
) -> Iterator[Callable[..., tuple[ChatSession, Recorder]]]:
    made: list[tuple[ChatSession, History]] = []

    def make(engine: FakeEngine, settings: dict | None = None) -> tuple[ChatSession, Recorder]:
        store = SettingsStore(tmp_path / "settings.json")
        store.update({"model_path": str(fake_gguf), **(settings or {})})
        history = History(tmp_path / "history.sqlite3")
        session = ChatSession(lambda: engine, history, store)
        made.append((session, history))
        recorder = Recorder(session)
        session.load(store.load_options())
        qtbot.waitUntil(lambda: session.state is SessionState.READY, timeout=WAIT_MS)
        return session, recorder

    yield make
    for session, history in made:
        session.close()
        history.close()


def _idle(qtbot, session: ChatSession) -> None:
    """Wait until no reply runs and no model loads (a reload after a crash comes first)."""

    def idle() -> bool:
        state = session.state
        return session.turn is None and not state.replying and state is not SessionState.LOADING

    qtbot.waitUntil(idle, timeout=WAIT_MS)


def _stored(session: ChatSession):
    assert session.conversation_id is not None
    return session.history.messages(session.conversation_id)


def _engine(tokens_per_s: float | None = None, answer: str = ANSWER) -> FakeEngine:
    return FakeEngine(FakeScript(reasoning=REASONING, answer=answer), tokens_per_s=tokens_per_s)


def test_a_turn_goes_through_its_states_and_lands_in_the_history(make_session, qtbot):
    engine = _engine()
    session, seen = make_session(engine)
    assert session.send("  Sum of the first 50 odd numbers?  ")
    _idle(qtbot, session)

    assert seen.states == [
        SessionState.LOADING,
        SessionState.READY,
        SessionState.READING_PROMPT,
        SessionState.REASONING,
        SessionState.ANSWERING,
        SessionState.READY,
    ]
    assert seen.shown() == (REASONING, ANSWER)
    (ended,) = seen.ended
    assert ended.status is MessageStatus.COMPLETE
    user, reply = _stored(session)
    assert user.content == "Sum of the first 50 odd numbers?"
    assert (reply.reasoning, reply.content) == (REASONING, ANSWER)
    assert reply.status is MessageStatus.COMPLETE
    # The title is the user's words; the reasoning never names a chat.
    assert session.history.conversation(session.conversation_id).title == user.content
    # The evaluation preset (the default): the instruction rides in the user's turn.
    (sent,) = engine.requests[-1:]
    assert [(m.role, m.content) for m in sent] == [
        ("user", f"Sum of the first 50 odd numbers?\n{FATHOM_EVAL_INSTRUCTION}")
    ]


def test_live_token_counts_are_the_engines_and_end_equal_to_its_stats(make_session, qtbot):
    session, seen = make_session(_engine())
    session.send("Count them.")
    _idle(qtbot, session)
    (ended,) = seen.ended
    stats = ended.stats
    assert stats is not None and stats.reasoning_tokens > 100
    # The scripted engine's deltas carry tokens=1 each; the running counts are their sums.
    counts = [(t.reasoning_tokens, t.answer_tokens) for t in seen.texts]
    assert counts == sorted(counts)  # they only grow
    assert counts[-1] == (stats.reasoning_tokens, stats.answer_tokens)
    assert ended.record["reasoning_tokens"] == stats.reasoning_tokens


def test_a_custom_system_prompt_goes_first(make_session, qtbot):
    engine = _engine()
    session, _ = make_session(
        engine, settings={"system_preset": "custom", "system_prompt": "Answer in French."}
    )
    session.send("Bonjour?")
    _idle(qtbot, session)
    assert [(m.role, m.content) for m in engine.requests[-1]] == [
        ("system", "Answer in French."),
        ("user", "Bonjour?"),
    ]


def test_a_message_is_refused_while_a_reply_runs(make_session, qtbot):
    session, _ = make_session(_engine(tokens_per_s=200))
    assert session.send("one")
    assert not session.send("two")
    assert not session.new_conversation()
    session.stop()
    assert session.state is SessionState.STOPPING
    _idle(qtbot, session)
    assert [m.role for m in _stored(session)] == ["user", "assistant"]


def test_the_engine_dying_mid_reply_keeps_what_was_shown_and_the_next_message_reloads(
    make_session, qtbot
):
    engine = _engine()
    engine.crash_next(Crash(after_tokens=40, gpu_memory=True))
    session, seen = make_session(engine)
    session.send("First question")
    qtbot.waitUntil(lambda: session.state is SessionState.ENGINE_FAILED, timeout=WAIT_MS)

    (failure,) = seen.failures
    assert failure.message == "The model's process ended with SIGABRT: CUDA error: out of memory"
    assert not failure.while_loading
    assert failure.fewer_gpu_layers == 49 // 2  # the scripted engine had all 49 on the GPU
    shown_reasoning, shown_answer = seen.shown()
    assert shown_reasoning and REASONING.startswith(shown_reasoning)
    (ended,) = seen.ended
    assert ended.status is MessageStatus.ERROR
    _, reply = _stored(session)
    # Every character that was shown is kept, and the reply is marked failed with the reason.
    assert (reply.reasoning, reply.content) == (shown_reasoning, shown_answer)
    assert reply.status is MessageStatus.ERROR
    assert reply.stats["error"] == failure.message and reply.stats["engine_crashed"] is True
    assert reply.stats["reasoning_tokens"] == 40
    assert SessionState.READY not in seen.states[seen.states.index(SessionState.REASONING) :]

    loads = len(engine.load_calls)
    assert session.send("Second question")  # reloads the model by itself, then answers
    _idle(qtbot, session)
    assert len(engine.load_calls) == loads + 1
    assert session.state is SessionState.READY
    stored = _stored(session)
    assert [(m.role, m.status) for m in stored] == [
        ("user", MessageStatus.COMPLETE),
        ("assistant", MessageStatus.ERROR),
        ("user", MessageStatus.COMPLETE),
        ("assistant", MessageStatus.COMPLETE),
    ]
    assert stored[-1].content == ANSWER


def test_a_crash_while_loading_is_reported_the_same_way_and_reload_recovers(
    make_session, qtbot, tmp_path
):
    engine = _engine()
    session, seen = make_session(engine)
    engine.crash_next(Crash(while_loading=True, gpu_memory=True, signal_name="SIGSEGV"))
    session.load(session.last_good_load)
    qtbot.waitUntil(lambda: session.state is SessionState.ENGINE_FAILED, timeout=WAIT_MS)
    (failure,) = seen.failures
    assert failure.while_loading and failure.message.startswith(
        "The model's process ended with SIGSEGV"
    )
    assert seen.load_failures == []  # a crash is not a bad file: no "choose another model"

    assert session.reload(fewer_gpu_layers=True)
    qtbot.waitUntil(lambda: session.state is SessionState.READY, timeout=WAIT_MS)
    assert engine.load_calls[-1].n_gpu_layers == 24
    assert session.send("Still there?")
    _idle(qtbot, session)
    assert _stored(session)[-1].status is MessageStatus.COMPLETE


def test_a_bad_model_file_is_a_load_failure_not_an_engine_failure(make_session, qtbot, tmp_path):
    session, seen = make_session(_engine())
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model", encoding="utf-8")
    session.load(LoadOptions(model_path=bad))
    qtbot.waitUntil(lambda: session.state is SessionState.NO_MODEL, timeout=WAIT_MS)
    assert seen.load_failures == ["notes.gguf is not a GGUF model file."]
    assert seen.failures == []
    assert not session.send("Anyone?")


@pytest.mark.parametrize("stop_after_answer_started", [False, True])
def test_continue_resumes_a_stopped_reply_where_it_ended(
    make_session, qtbot, stop_after_answer_started
):
    engine = _engine(tokens_per_s=400, answer=LONG_ANSWER)
    session, seen = make_session(engine)
    session.send("Keep going")
    target = SessionState.ANSWERING if stop_after_answer_started else SessionState.REASONING
    qtbot.waitUntil(lambda: session.state is target and bool(seen.texts), timeout=WAIT_MS)
    if stop_after_answer_started:
        qtbot.waitUntil(lambda: bool(seen.shown()[1]), timeout=WAIT_MS)
    session.stop()
    _idle(qtbot, session)
    _, stopped = _stored(session)
    assert stopped.status is MessageStatus.STOPPED
    assert bool(stopped.content) is stop_after_answer_started

    engine.tokens_per_s = None
    assert session.continue_reply(stopped.id)
    _idle(qtbot, session)

    # The engine was asked to go on from the saved text, as the unfinished assistant message.
    partial = engine.requests[-1][-1]
    assert partial.role == "assistant" and partial.partial
    assert (partial.reasoning, partial.content) == (stopped.reasoning, stopped.content)
    # One reply, whole: the saved text and the rest, nothing lost or repeated.
    stored = _stored(session)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert (stored[-1].reasoning, stored[-1].content) == (REASONING, LONG_ANSWER)
    assert stored[-1].status is MessageStatus.COMPLETE
    assert stored[-1].stats["reasoning_tokens"] == engine.count_tokens(REASONING)


def test_continue_after_the_engine_died_reloads_and_finishes_the_reply(make_session, qtbot):
    engine = _engine()
    engine.crash_next(Crash(after_tokens=25))
    session, seen = make_session(engine)
    session.send("Crash, then carry on")
    qtbot.waitUntil(lambda: session.state is SessionState.ENGINE_FAILED, timeout=WAIT_MS)
    (_, failed) = _stored(session)
    assert seen.failures[0].fewer_gpu_layers is None  # not a GPU-memory failure
    assert session.continue_reply(failed.id)
    _idle(qtbot, session)
    (_, whole) = _stored(session)
    assert (whole.reasoning, whole.content, whole.status) == (
        REASONING,
        ANSWER,
        MessageStatus.COMPLETE,
    )


def test_only_the_last_unfinished_reply_can_be_continued(make_session, qtbot):
    session, _ = make_session(_engine())
    session.send("Finish this")
    _idle(qtbot, session)
    (_, complete) = _stored(session)
    assert not session.continue_reply(complete.id)
    assert _stored(session)[-1].id == complete.id


def test_answer_now_asks_for_the_answer_during_the_reasoning_only(make_session, qtbot):
    engine = _engine(tokens_per_s=300)
    session, _ = make_session(engine)
    assert not session.answer_now()  # nothing is running
    session.send("Quick")
    qtbot.waitUntil(lambda: session.state is SessionState.REASONING, timeout=WAIT_MS)
    assert session.answer_now()
    _idle(qtbot, session)
    (_, reply) = _stored(session)
    assert reply.content == ANSWER
    assert len(reply.reasoning) < len(REASONING)
    assert reply.stats["thinking_closed_early"] is True
