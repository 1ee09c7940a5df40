"""The whole product on the demo model: a held-out problem asked in the chat window.

The reasoning pane fills while the model thinks and folds when the answer starts; the answer's
`\\boxed{}` is drawn as math, not raw TeX, and holds the right number.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fathom_desktop.engine.consensus import extract_boxed
from fathom_desktop.history import MessageStatus

# The GUI suite's fixtures: a private FATHOM_HOME per test and a window factory.
from tests.gui.conftest import (  # noqa: F401
    WAIT_MS,
    artifacts,
    fake_gguf,
    fathom_home,
    make_window,
    screenshot,
    wait_idle,
)
from training.heldout import held_out_problems

pytestmark = pytest.mark.slow


def test_a_held_out_problem_is_answered_right_in_the_window(
    make_window,  # noqa: F811
    qtbot,
    demo_gguf: Path,
    artifacts: Path,  # noqa: F811
) -> None:
    from fathom_desktop.engine import LlamaEngine

    window = make_window(
        LlamaEngine(),
        settings={"model_path": str(demo_gguf), "temperature": 0.0, "seed": 0, "n_threads": 2},
    )
    report = window.session.report
    assert report is not None and report.n_ctx == 4096  # capped, with a note
    right = 0
    problems = held_out_problems(3)
    for problem in problems:
        window.session.send(problem.question)
        reply = window.chat.assistant_messages()[-1]
        qtbot.waitUntil(lambda: len(reply.reasoning.text()) > 10, timeout=WAIT_MS)  # noqa: B023
        wait_idle(qtbot, window)

        assert "ones:" in reply.reasoning.text() or "tens:" in reply.reasoning.text()
        assert not reply.reasoning.is_expanded()  # folded once the answer started
        assert reply.reasoning.header_text().startswith("Thought for ")
        assert "\\boxed" not in reply.answer.toPlainText()  # drawn, not raw TeX
        assert reply.answer.formulas >= 1
        stored = window.session.history.messages(window.session.conversation_id)[-1]
        assert stored.status is MessageStatus.COMPLETE
        assert "</think>" not in (stored.reasoning or "") + stored.content
        right += extract_boxed(stored.content) == str(problem.answer)
    screenshot(window, artifacts, "demo-answered")
    assert right >= 2, f"{right}/{len(problems)} held-out problems right in the window"


def _answer_in_window(make_window, qtbot, demo_gguf: Path):  # noqa: F811
    from fathom_desktop.engine import LlamaEngine

    window = make_window(
        LlamaEngine(),
        settings={"model_path": str(demo_gguf), "temperature": 0.0, "seed": 0, "n_threads": 2},
    )
    live: list = []
    window.session.reply_text.connect(live.append)
    window.session.send(held_out_problems(1)[0].question)
    # A whole demo reply on a busy 2-core machine can take longer than a GUI step.
    qtbot.waitUntil(lambda: window.session.turn is None, timeout=120_000)
    stored = window.session.history.messages(window.session.conversation_id)[-1]
    assert stored.status is MessageStatus.COMPLETE
    return window, live, stored.stats


def test_the_windows_final_token_counts_are_the_engines(
    make_window,  # noqa: F811
    qtbot,
    demo_gguf: Path,
) -> None:
    window, _, stats = _answer_in_window(make_window, qtbot, demo_gguf)
    reply = window.chat.assistant_messages()[-1]
    assert stats["reasoning_tokens"] > 20
    assert reply.reasoning.header_text().endswith(f" · {stats['reasoning_tokens']:,} tokens")
    usage = window.meter.usage
    assert (usage.prompt, usage.reasoning, usage.answer) == (
        stats["prompt_tokens"],
        stats["reasoning_tokens"],
        stats["answer_tokens"],
    )
    assert window.speed_label.text() == f"{stats['decode_tokens_per_s']:.1f} tok/s"


def test_the_windows_live_token_counts_add_up_to_the_engines_stats(
    make_window,  # noqa: F811
    qtbot,
    demo_gguf: Path,
) -> None:
    _, live, stats = _answer_in_window(make_window, qtbot, demo_gguf)
    # What "Thinking… N tokens", the meter and tok/s showed last while streaming: the sums of
    # the engine's per-delta counts, which must come to its final figures.
    assert (live[-1].reasoning_tokens, live[-1].answer_tokens) == (
        stats["reasoning_tokens"],
        stats["answer_tokens"],
    )
