"""Consensus ×K in the window: one lane per sample while they run (at most P at once), the vote as
a bar chart, every sample browsable afterwards, and all of it kept in the history."""

from __future__ import annotations

from PySide6.QtCore import QPoint, Qt

from fathom_desktop.engine.scripted import FakeEngine, FakeScript
from fathom_desktop.gui.consensus_view import Bar, LaneState
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import History, MessageStatus
from tests.gui.conftest import WAIT_MS, screenshot, wait_idle

QUESTION = "Sum of the first 50 odd numbers?"
# Three ways a sample goes: two right with reasoning of different lengths, one wrong.
RIGHT_SHORT = FakeScript(
    reasoning="The sum of the first n odd numbers is n squared, so 2500.\n",
    answer="So the sum is \\boxed{2500}.",
)
RIGHT_LONG = FakeScript(
    reasoning=(
        "Pair them up: 1 + 99, 3 + 97, and so on, 25 pairs of 100 each. "
        "That gives 25 times 100, which is 2500. Check with n squared: 50 squared is 2500.\n"
    ),
    answer="Pairing the terms gives \\boxed{2500}.",
)
WRONG = FakeScript(
    reasoning="The last odd number is 99, and 50 of them average 50.02, so about 2501.\n",
    answer="Roughly \\boxed{2501}.",
)
SCRIPTS = (RIGHT_SHORT, RIGHT_LONG, WRONG)


def _engine(tokens_per_s: float | None = 400.0, scripts=SCRIPTS) -> FakeEngine:
    return FakeEngine(tokens_per_s=tokens_per_s, sample_scripts=scripts)


def _stored(window) -> list:
    return window.session.history.messages(window.session.conversation_id)


def _ask(window, samples: int) -> None:
    window.composer.set_text(QUESTION)
    assert window.consensus(samples)


def _view(window):
    view = window.chat.assistant_messages()[-1].consensus
    assert view is not None
    return view


# Long enough that the four first samples think together for a good part of a second.
LONGER = tuple(
    FakeScript(reasoning=s.reasoning * 6, answer=s.answer) for s in (RIGHT_SHORT, RIGHT_LONG, WRONG)
)


def test_lanes_show_the_samples_side_by_side_at_most_p_at_once(make_window, qtbot, artifacts):
    window = make_window(_engine(tokens_per_s=150.0, scripts=LONGER))
    _ask(window, 6)
    view = _view(window)
    assert len(view.lanes) == 6
    seen: list[tuple[LaneState, ...]] = []
    tokens_seen: list[tuple[int, ...]] = []
    first_full: list[tuple[list[int], list[int], str]] = []

    def look(_progress) -> None:
        seen.append(tuple(lane.state for lane in view.lanes))
        tokens_seen.append(tuple(s.reasoning_tokens for s in view.samples))
        running = [i for i, lane in enumerate(view.lanes) if lane.state.running]
        if len(running) == 4 and not first_full:
            waiting = [i for i, lane in enumerate(view.lanes) if lane.state is LaneState.WAITING]
            first_full.append((running, waiting, view.lanes[5].title))
            screenshot(window, artifacts, "consensus-running")

    window.session.consensus_progress.connect(look)
    wait_idle(qtbot, window)
    # The first four ran while the last two waited for a free slot.
    assert first_full == [([0, 1, 2, 3], [4, 5], "#6 · waiting")]

    # Never more than P = 4 at once; the samples grew together, not one after another.
    assert max(sum(state.running for state in states) for states in seen) == 4
    together = [t for t in tokens_seen if all(n > 0 for n in t[:4])]
    assert together and any(
        all(state is LaneState.THINKING for state in states[:4]) for states in seen
    ), "the first four samples never thought at the same time"
    # Every lane ends done, with its sample's reasoning tokens and boxed answer.
    counts = [window.engine.count_tokens(s.reasoning) for s in LONGER]
    for index, lane in enumerate(view.lanes):
        script = SCRIPTS[index % 3]
        assert lane.state is LaneState.DONE
        assert lane.tokens == f"{counts[index % 3]} tokens"
        assert lane.answer == ("= 2501" if script is WRONG else "= 2500")
    screenshot(window, artifacts, "consensus-done")


def test_a_cap_on_parallel_samples_is_kept(make_window, qtbot):
    window = make_window(_engine(tokens_per_s=150.0, scripts=LONGER))
    running: list[int] = []
    window.session.consensus_progress.connect(
        lambda _p: running.append(sum(lane.state.running for lane in _view(window).lanes))
    )
    assert window.session.send(QUESTION, samples=5, parallel=2)
    wait_idle(qtbot, window)
    assert max(running) == 2
    [_, stored] = _stored(window)
    assert stored.stats["consensus"]["parallel"] == 2
    assert _view(window).header.text() == "Consensus ×5 · up to 2 decoded at once"


def test_the_samples_at_once_setting_caps_the_window_s_consensus(make_window, qtbot):
    window = make_window(_engine(tokens_per_s=150.0, scripts=LONGER))
    window.store.set("consensus_parallel", 3)
    running: list[int] = []
    window.session.consensus_progress.connect(
        lambda _p: running.append(sum(lane.state.running for lane in _view(window).lanes))
    )
    _ask(window, 5)
    wait_idle(qtbot, window)
    assert max(running) == 3
    assert _stored(window)[-1].stats["consensus"]["parallel"] == 3


def test_the_vote_chart_counts_answers_as_samples_finish(make_window, qtbot):
    window = make_window(_engine())
    totals: list[int] = []
    window.session.consensus_progress.connect(lambda _p: totals.append(_view(window).chart.total))
    _ask(window, 6)
    wait_idle(qtbot, window)
    chart = _view(window).chart
    # It filled in as samples finished, not only at the end.
    assert 0 in totals and any(0 < total < 6 for total in totals) and totals[-1] == 6
    assert chart.bars == [Bar("2500", "2500", 4, winner=True), Bar("2501", "2501", 2)]
    assert chart.caption() == "Vote: 4 of 6 agree (67%) on 2500"
    reply = window.chat.assistant_messages()[-1]
    assert "Consensus ×6: 2500, 4 of 6 agree (67%)" in reply.figures.text()
    assert _view(window).header.text() == "Consensus ×6 · up to 4 decoded at once"


def test_samples_without_a_boxed_answer_get_their_own_bar(make_window, qtbot):
    boxless = FakeScript(reasoning="Hmm.\n", answer="I am not sure.")
    window = make_window(_engine(scripts=(RIGHT_SHORT, boxless)))
    _ask(window, 3)
    wait_idle(qtbot, window)
    chart = _view(window).chart
    assert chart.bars == [Bar("2500", "2500", 2, winner=True), Bar(None, "no boxed answer", 1)]
    assert chart.caption() == "Vote: 2 of 3 agree (67%) on 2500"
    assert _view(window).lanes[1].answer == "no boxed answer"


def test_with_nothing_boxed_no_sample_is_called_the_winner(make_window, qtbot):
    boxless = FakeScript(reasoning="Hmm.\n", answer="I am not sure.")
    window = make_window(_engine(scripts=(boxless,)))
    _ask(window, 2)
    wait_idle(qtbot, window)
    view = _view(window)
    assert view.chart.caption() == "Vote: none of 2 boxed an answer"
    assert view.winner is None and not any(lane.winner for lane in view.lanes)
    assert view.showing.text().startswith("Showing sample 1 ·")
    reply = window.chat.assistant_messages()[-1]
    assert "Consensus ×2: no sample boxed an answer" in reply.figures.text()
    assert reply.answer.source == boxless.answer


def test_the_winner_is_shown_and_any_sample_can_be_browsed(make_window, qtbot):
    window = make_window(_engine())
    _ask(window, 6)
    wait_idle(qtbot, window)
    reply = window.chat.assistant_messages()[-1]
    view = reply.consensus
    # The winner (the first 2500) fills the usual panes.
    assert view.winner == 0 and view.selected == 0
    assert reply.reasoning.text() == RIGHT_SHORT.reasoning
    assert reply.answer.source == RIGHT_SHORT.answer
    assert "(the vote's winner)" in view.showing.text()

    qtbot.mouseClick(view.lanes[4], Qt.MouseButton.LeftButton)  # sample 5 says RIGHT_LONG
    assert view.selected == 4 and view.lanes[4].selected and not view.lanes[0].selected
    assert reply.reasoning.text() == RIGHT_LONG.reasoning
    assert reply.answer.source == RIGHT_LONG.answer
    # Samples ran together: no duration of its own, its own token count.
    tokens = window.engine.count_tokens(RIGHT_LONG.reasoning)
    assert reply.reasoning.header_text() == f"Thought · {tokens} tokens"
    assert view.showing.text().startswith("Showing sample 5 ·")

    # A click on the 2501 bar shows the first sample that said 2501, then the next one.
    row = next(i for i, bar in enumerate(view.chart.bars) if bar.key == "2501")
    point = view.chart.bar_rect(row).center().toPoint()
    qtbot.mouseClick(view.chart, Qt.MouseButton.LeftButton, pos=point)
    assert view.selected == 2 and reply.answer.source == WRONG.answer
    qtbot.mouseClick(view.chart, Qt.MouseButton.LeftButton, pos=point)
    assert view.selected == 5 and reply.reasoning.text() == WRONG.reasoning
    qtbot.mouseClick(view.chart, Qt.MouseButton.LeftButton, pos=QPoint(2, 2))  # the caption
    assert view.selected == 5


def test_a_followed_sample_streams_into_the_reasoning_pane(make_window, qtbot):
    window = make_window(_engine(tokens_per_s=150.0))
    _ask(window, 4)
    reply = window.chat.assistant_messages()[-1]
    view = reply.consensus
    qtbot.waitUntil(lambda: view.samples[2].reasoning_tokens >= 3, timeout=WAIT_MS)
    qtbot.mouseClick(view.lanes[2], Qt.MouseButton.LeftButton)
    assert reply.reasoning.text() == view.samples[2].reasoning_text()
    qtbot.waitUntil(lambda: view.samples[2].record is not None, timeout=WAIT_MS)
    assert reply.reasoning.text() == WRONG.reasoning  # followed to its end
    wait_idle(qtbot, window)
    assert view.selected == 0  # the vote's winner once it is in


def test_a_consensus_is_kept_in_the_history_and_shown_again(make_window, qtbot, tmp_path):
    path = tmp_path / "kept.sqlite3"
    window = make_window(_engine(), history_path=path)
    _ask(window, 6)
    wait_idle(qtbot, window)
    [_, stored] = _stored(window)
    assert stored.status is MessageStatus.COMPLETE
    assert (stored.reasoning, stored.content) == (RIGHT_SHORT.reasoning, RIGHT_SHORT.answer)
    assert [s["answer"] for s in stored.samples] == [SCRIPTS[i % 3].answer for i in range(6)]
    assert [s["reasoning"] for s in stored.samples] == [SCRIPTS[i % 3].reasoning for i in range(6)]
    counts = [window.engine.count_tokens(SCRIPTS[i % 3].reasoning) for i in range(6)]
    assert [s["reasoning_tokens"] for s in stored.samples] == counts
    assert [s["boxed"] for s in stored.samples] == ["2500", "2500", "2501"] * 2
    vote = stored.stats["consensus"]
    assert vote["votes"] == {"2500": 4, "2501": 2}
    assert (vote["winner"], vote["parallel"], vote["requested"]) == (0, 4, 6)
    conversation = window.session.conversation_id
    window.shutdown()

    reopened = make_window(_engine(), history_path=path)
    reopened.session.open_conversation(conversation)
    reply = reopened.chat.assistant_messages()[-1]
    view = reply.consensus
    assert view is not None and len(view.lanes) == 6
    assert [lane.state for lane in view.lanes] == [LaneState.DONE] * 6
    assert view.chart.bars == [Bar("2500", "2500", 4, winner=True), Bar("2501", "2501", 2)]
    assert reply.reasoning.text() == RIGHT_SHORT.reasoning
    assert "Consensus ×6: 2500, 4 of 6 agree (67%)" in reply.figures.text()
    assert not reply.continue_button.isVisible()
    qtbot.mouseClick(view.lanes[2], Qt.MouseButton.LeftButton)
    assert (reply.reasoning.text(), reply.answer.source) == (WRONG.reasoning, WRONG.answer)


def test_stop_ends_every_sample_and_keeps_what_was_done(make_window, qtbot):
    slow = FakeScript(reasoning=" ".join(["step"] * 400) + "\n", answer="\\boxed{7}")
    window = make_window(_engine(tokens_per_s=100.0, scripts=(RIGHT_SHORT,) + (slow,) * 7))
    _ask(window, 8)
    view = _view(window)
    # Sample 1 finishes quickly; sample 5 takes its slot; the other three think on.
    qtbot.waitUntil(lambda: view.lanes[4].state.running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: view.samples[4].reasoning_tokens >= 3, timeout=WAIT_MS)
    window.session.stop()
    wait_idle(qtbot, window)

    [_, stored] = _stored(window)
    assert stored.status is MessageStatus.STOPPED
    assert len(stored.samples) == 5  # samples 6 to 8 never started
    assert len(window.engine.requests) == 5
    assert stored.samples[0]["finish_reason"] == "stop"
    for sample in stored.samples[1:]:
        assert sample["finish_reason"] == "cancelled"
        assert sample["reasoning"].startswith("step step") and sample["reasoning_tokens"] >= 3
    assert stored.stats["consensus"]["votes"] == {"2500": 1}
    states = [lane.state for lane in view.lanes]
    assert states == [LaneState.DONE] + [LaneState.STOPPED] * 4 + [LaneState.WAITING] * 3
    assert view.header.text().startswith("Consensus ×8 · 5 of 8 samples ran")
    reply = window.chat.assistant_messages()[-1]
    assert "stopped" in reply.figures.text()
    assert not reply.continue_button.isVisible()
    qtbot.mouseClick(view.lanes[3], Qt.MouseButton.LeftButton)
    assert reply.reasoning.text() == stored.samples[3]["reasoning"]
    assert reply.reasoning.header_text().startswith("Stopped")


def test_answer_now_closes_the_reasoning_of_the_samples_running_then(make_window, qtbot):
    slow = FakeScript(reasoning=" ".join(["step"] * 400) + "\n", answer="\\boxed{7}")
    window = make_window(_engine(tokens_per_s=100.0, scripts=(slow,)))
    _ask(window, 6)
    view = _view(window)
    qtbot.waitUntil(lambda: window.session.state is SessionState.REASONING, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: view.samples[3].reasoning_tokens >= 2, timeout=WAIT_MS)
    assert window.session.answer_now()
    qtbot.waitUntil(lambda: view.lanes[4].state.running, timeout=WAIT_MS)
    window.session.stop()  # the later samples would think in full: no need to wait for them
    wait_idle(qtbot, window)
    [_, stored] = _stored(window)
    # The four samples running when it was pressed answered early, with their boxed value.
    for sample in stored.samples[:4]:
        assert sample["thinking_closed_early"] and sample["boxed"] == "7"
        assert sample["reasoning_tokens"] < 400
    assert not stored.samples[4]["thinking_closed_early"]


def test_a_consensus_cut_off_by_a_closing_app_keeps_its_samples(make_window, qtbot, tmp_path):
    path = tmp_path / "closed.sqlite3"
    slow = FakeScript(reasoning=" ".join(["step"] * 400) + "\n", answer="\\boxed{7}")
    window = make_window(_engine(tokens_per_s=100.0, scripts=(slow,)), history_path=path)
    _ask(window, 4)
    view = _view(window)
    qtbot.waitUntil(lambda: view.samples[3].reasoning_tokens >= 3, timeout=WAIT_MS)
    conversation = window.session.conversation_id
    window.shutdown()
    with History(path) as history:
        [_, stored] = history.messages(conversation)
    assert stored.status is MessageStatus.STOPPED
    assert len(stored.samples) == 4
    assert all(s["reasoning"].startswith("step") for s in stored.samples)


def test_a_consensus_the_app_died_in_shows_what_each_sample_had(make_window, qtbot, tmp_path):
    from fathom_desktop.history.samples import SampleRecord

    path = tmp_path / "died.sqlite3"
    so_far = [
        SampleRecord(0, "Half of a thought", "", None, 4, 0),
        SampleRecord(1, "All of a thought", "So \\boxed{2500}.", "2500", 4, 3, "stop"),
    ]
    with History(path) as history:
        conversation = history.create_conversation("Died")
        history.add_user_message(conversation, QUESTION)
        reply = history.begin_assistant_message(conversation, "m.gguf", "Q4_K_M", None)
        history.save_partial(reply, "", "", [s.to_dict() for s in so_far])
    window = make_window(history_path=path)
    window.session.open_conversation(conversation)
    shown = window.chat.assistant_messages()[-1]
    view = shown.consensus
    assert view is not None
    assert [lane.state for lane in view.lanes] == [LaneState.UNFINISHED, LaneState.DONE]
    assert "interrupted" in shown.figures.text()
    assert shown.reasoning.text() == "Half of a thought"
    qtbot.mouseClick(view.lanes[1], Qt.MouseButton.LeftButton)
    assert shown.answer.source == "So \\boxed{2500}."


def test_a_wide_window_shows_more_lanes_side_by_side(qtbot):
    from fathom_desktop.gui.consensus_view import ConsensusView

    view = ConsensusView(64)
    qtbot.addWidget(view)
    view.show()

    def row_and_column(index: int) -> tuple[int, int]:
        position = view._grid.getItemPosition(view._grid.indexOf(view.lanes[index]))
        return position[0], position[1]

    view.resize(1250, 400)
    qtbot.waitUntil(lambda: view.columns == 8)
    assert row_and_column(8) == (1, 0) and row_and_column(63) == (7, 7)
    tall = view.lane_area.height()
    qtbot.waitUntil(lambda: all(lane.width() >= 140 for lane in view.lanes[:8]))

    view.resize(640, 400)
    qtbot.waitUntil(lambda: view.columns == 4)
    assert row_and_column(8) == (2, 0) and row_and_column(63) == (15, 3)
    assert view.lane_area.height() >= tall  # twice the rows: as tall as allowed, then scrolling

    view.resize(200, 400)
    qtbot.waitUntil(lambda: view.columns == 2)
    assert row_and_column(63) == (31, 1)
