"""Continuing an unfinished reply on the demo model: the engine prefills the saved text and the
greedy reply goes on exactly as if it had never stopped, in the reasoning or in the answer."""

from __future__ import annotations

import pytest

from fathom_desktop.engine.types import ChatMessage, DeltaKind, Finished, SamplingParams, TextDelta
from training.heldout import held_out_problems

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0.0, seed=0, max_tokens=600)


def _run(engine, messages: list[ChatMessage]) -> tuple[list[TextDelta], Finished]:  # noqa: ANN001
    events = list(engine.generate(messages, GREEDY))
    finished = events[-1]
    assert isinstance(finished, Finished)
    return [e for e in events if isinstance(e, TextDelta)], finished


def _cut(text: str) -> int:
    """A place in the middle of `text` just before a space, so that the seam needs one."""
    return text.index(" ", len(text) // 2)


@pytest.mark.parametrize("stopped_in", ["reasoning", "answer"])
def test_a_continued_reply_ends_as_the_whole_reply_would(demo_engine, stopped_in) -> None:  # noqa: ANN001
    question = [ChatMessage("user", held_out_problems(1)[0].question)]
    _, whole = _run(demo_engine, question)
    assert whole.reasoning and whole.answer

    if stopped_in == "reasoning":
        cut = _cut(whole.reasoning)
        partial = ChatMessage("assistant", "", reasoning=whole.reasoning[:cut], partial=True)
    else:
        cut = _cut(whole.answer)
        partial = ChatMessage(
            "assistant", whole.answer[:cut], reasoning=whole.reasoning, partial=True
        )
    deltas, rest = _run(demo_engine, [*question, partial])

    # Only the new text comes back, starting with the space the saved text ended before.
    assert deltas[0].text.startswith(" ")
    if stopped_in == "reasoning":
        assert deltas[0].kind is DeltaKind.REASONING
        assert partial.reasoning + rest.reasoning == whole.reasoning
        assert rest.answer == whole.answer
    else:
        assert {d.kind for d in deltas} == {DeltaKind.ANSWER}
        assert rest.reasoning == ""
        assert partial.content + rest.answer == whole.answer
    # The prefilled text is part of the prompt, not of the new reply's count.
    assert rest.stats.prompt_tokens > whole.stats.prompt_tokens
