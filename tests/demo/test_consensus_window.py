"""Consensus ×4 on the demo model in the window, through the engine's own process as the app runs
it: the samples decode together and their lanes move together, the vote and every sample are
shown, kept in the history and shown again from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from fathom_desktop.engine.answers import extract_boxed, normalize_answer
from fathom_desktop.engine.process_engine import SIDE_BY_SIDE_FACTORY, ProcessEngine
from fathom_desktop.gui.consensus_view import LaneState
from fathom_desktop.history import MessageStatus

# The GUI suite's fixtures: a private FATHOM_HOME per test and a window factory.
from tests.gui.conftest import (  # noqa: F401
    artifacts,
    fake_gguf,
    fathom_home,
    make_window,
    screenshot,
)
from training.heldout import held_out_problems

pytestmark = pytest.mark.slow
SAMPLES = 4


def test_consensus_of_four_on_the_demo_model_in_the_window(
    make_window,  # noqa: F811
    qtbot,
    demo_gguf: Path,
    artifacts: Path,  # noqa: F811
) -> None:
    engine = ProcessEngine(SIDE_BY_SIDE_FACTORY)
    window = make_window(
        engine,
        settings={"model_path": str(demo_gguf), "temperature": 0.8, "seed": 7, "n_threads": 2},
    )
    problem = held_out_problems(1)[0]
    running_together: list[int] = []

    def look(_progress) -> None:
        view = window.chat.assistant_messages()[-1].consensus
        running_together.append(sum(lane.state is LaneState.THINKING for lane in view.lanes))

    window.session.consensus_progress.connect(look)
    window.composer.set_text(problem.question)
    assert window.consensus(SAMPLES)
    qtbot.waitUntil(lambda: window.session.turn is None, timeout=180_000)

    [_, stored] = window.session.history.messages(window.session.conversation_id)
    assert stored.status is MessageStatus.COMPLETE
    vote = stored.stats["consensus"]
    parallel = vote["parallel"]
    assert parallel > 1, vote["parallel_reason"]
    # The lanes moved together: as many samples thought at once as the engine decoded at once.
    assert max(running_together) == min(parallel, SAMPLES)

    reply = window.chat.assistant_messages()[-1]
    view = reply.consensus
    assert [lane.state for lane in view.lanes] == [LaneState.DONE] * SAMPLES
    assert len(stored.samples) == SAMPLES
    for lane, sample in zip(view.lanes, stored.samples, strict=True):
        assert sample["reasoning_tokens"] > 20 and sample["reasoning"]
        assert sample["boxed"] == extract_boxed(sample["answer"])
        assert lane.tokens == f"{sample['reasoning_tokens']} tokens"
        if sample["boxed"] is not None:
            assert lane.answer == f"= {sample['boxed']}"
    # The chart is the engine's vote; the panes show its winner.
    boxed = [normalize_answer(s["boxed"]) for s in stored.samples if s["boxed"] is not None]
    assert {bar.key: bar.count for bar in view.chart.bars if bar.key} == vote["votes"]
    assert sum(vote["votes"].values()) == len(boxed)
    winner = stored.samples[vote["winner"]]
    assert (reply.reasoning.text(), reply.answer.source) == (winner["reasoning"], winner["answer"])
    assert extract_boxed(stored.content) == vote["answer"]
    screenshot(window, artifacts, "demo-consensus-4")

    # Every sample can be looked at, in the window and again after reopening the conversation.
    other = (vote["winner"] + 1) % SAMPLES
    qtbot.mouseClick(view.lanes[other], Qt.MouseButton.LeftButton)
    assert reply.reasoning.text() == stored.samples[other]["reasoning"]
    window.session.open_conversation(window.session.conversation_id)
    shown = window.chat.assistant_messages()[-1]
    assert shown.consensus is not None and len(shown.consensus.lanes) == SAMPLES
    assert shown.reasoning.text() == winner["reasoning"]
    qtbot.mouseClick(shown.consensus.lanes[other], Qt.MouseButton.LeftButton)
    assert shown.answer.source == stored.samples[other]["answer"]
