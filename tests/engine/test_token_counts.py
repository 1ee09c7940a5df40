"""The engine's token counts travel on its deltas: summed per kind over a stream they equal the
final stats exactly, so a counter in the window that adds them up shows the engine's truth while
the reply streams, and the same number when it ends.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fathom_desktop.engine import LlamaEngine
from fathom_desktop.engine.llama_engine import REASONING_CLOSER
from fathom_desktop.engine.process_engine import ProcessEngine
from fathom_desktop.engine.reasoning import ReasoningSplitter
from fathom_desktop.engine.types import (
    ChatMessage,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    LoadOptions,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from tests.engine.conftest import SMALL_CTX

QUESTION = [ChatMessage("user", "What is 3 + 4?")]


def delta_tokens(events: list[StreamEvent], kind: DeltaKind) -> int:
    return sum(e.tokens for e in events if isinstance(e, TextDelta) and e.kind is kind)


def assert_deltas_add_up(events: list[StreamEvent]) -> Finished:
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert delta_tokens(events, DeltaKind.REASONING) == finished.stats.reasoning_tokens
    assert delta_tokens(events, DeltaKind.ANSWER) == finished.stats.answer_tokens
    assert all(e.tokens >= 0 for e in events if isinstance(e, TextDelta))
    return finished


def stream_with(
    engine: LlamaEngine | ProcessEngine,
    sampling: SamplingParams,
    *,
    press: str | None = None,
    after_deltas: int = 8,
) -> list[StreamEvent]:
    """A whole stream; `press` ("answer_now" or "cancel") is pressed after a few deltas."""
    control = GenerationControl()
    events: list[StreamEvent] = []
    for event in engine.generate(QUESTION, sampling, control):
        events.append(event)
        if press and sum(isinstance(e, TextDelta) for e in events) == after_deltas:
            getattr(control, press).set()
    return events


CASES = {
    "plain": (SamplingParams(seed=5, max_tokens=60), None),
    "thinking budget": (SamplingParams(seed=6, max_tokens=60, thinking_budget=9), None),
    "answer now": (SamplingParams(seed=7, max_tokens=60), "answer_now"),
    "stop": (SamplingParams(seed=8, max_tokens=200), "cancel"),
}


@pytest.fixture(scope="module", params=["current template", "legacy template"])
def template_engine(request, tiny_gguf_f32: Path, tiny_gguf_legacy: Path):
    model = tiny_gguf_f32 if request.param == "current template" else tiny_gguf_legacy
    engine = LlamaEngine()
    engine.load(LoadOptions(model, n_ctx=SMALL_CTX))
    yield engine
    engine.close()


@pytest.mark.parametrize("case", CASES)
def test_deltas_carry_every_token_of_the_real_engine(template_engine: LlamaEngine, case: str):
    sampling, press = CASES[case]
    events = stream_with(template_engine, sampling, press=press)
    finished = assert_deltas_add_up(events)
    stats = finished.stats
    generated = stats.reasoning_tokens + stats.answer_tokens
    if case == "stop":
        assert stats.finish_reason is FinishReason.CANCELLED and generated < 200
    else:
        assert generated == sampling.max_tokens
    # Every token the model sampled is in one count or the other; the closer the engine forced
    # in is in neither (it sits in the KV cache all the same).
    closer = template_engine.count_tokens(REASONING_CLOSER) if stats.thinking_closed_early else 0
    assert template_engine.n_past == stats.prompt_tokens + generated + closer
    if case == "thinking budget" and stats.thinking_closed_early:
        assert stats.reasoning_tokens == 9


def test_the_current_template_closes_the_reasoning_on_budget(engine: LlamaEngine):
    events = stream_with(engine, SamplingParams(seed=6, max_tokens=30, thinking_budget=9))
    finished = assert_deltas_add_up(events)
    assert finished.stats.thinking_closed_early
    assert (finished.stats.reasoning_tokens, finished.stats.answer_tokens) == (9, 21)
    # The window's counter, summing deltas, reaches the budget before the first answer delta.
    first_answer = next(
        i for i, e in enumerate(events) if isinstance(e, TextDelta) and e.kind is DeltaKind.ANSWER
    )
    assert delta_tokens(events[:first_answer], DeltaKind.REASONING) == 9


def test_counts_cross_the_process_boundary(engine: LlamaEngine, tiny_gguf_f32: Path):
    sampling = SamplingParams(seed=6, max_tokens=30, thinking_budget=9)
    remote = ProcessEngine()
    try:
        remote.load(LoadOptions(tiny_gguf_f32, n_ctx=SMALL_CTX))
        events = stream_with(remote, sampling)
    finally:
        remote.close()
    finished = assert_deltas_add_up(events)
    local = list(engine.generate(QUESTION, sampling))
    assert [e.tokens for e in events if isinstance(e, TextDelta)] == [
        e.tokens for e in local if isinstance(e, TextDelta)
    ]
    assert finished.stats.reasoning_tokens == 9


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("starts_in_reasoning", [True, False])
def test_the_splitter_hands_on_every_token_it_is_fed(seed: int, starts_in_reasoning: bool):
    """Tokens go to the section their text was fed into; a legacy reply's first tokens to the
    section it turns out to open; the tag and the whitespace around it count too."""
    rng = random.Random(seed)
    opening = "" if starts_in_reasoning else rng.choice(["<think>", "\n<think>\n", ""])
    reasoning = "Let me think.\n\nOdd numbers add up to squares."
    answer = "The sum is \\boxed{2500}."
    text = (
        f"{opening}{reasoning}\n</think>\n\n{answer}" if opening or starts_in_reasoning else answer
    )
    pieces: list[str] = []
    rest = text
    while rest:
        cut = rng.randint(1, 5)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    deltas: list[TextDelta] = []
    for piece in pieces:
        deltas += splitter.feed(piece, tokens=1)
        deltas += splitter.feed("", tokens=1)  # a token whose bytes complete no character yet
    deltas += splitter.finish()
    fed = 2 * len(pieces)
    total = {kind: sum(d.tokens for d in deltas if d.kind is kind) for kind in DeltaKind}
    assert total[DeltaKind.REASONING] + total[DeltaKind.ANSWER] == fed
    assert total == {kind: splitter.tokens(kind) for kind in DeltaKind}
    if text == answer:
        assert total[DeltaKind.REASONING] == 0
    else:
        # Every piece up to the one that completes `</think>` belongs to the reasoning; the
        # empty one after that piece comes when the answer has begun.
        close_end = text.index("</think>") + len("</think>")
        consumed, reasoning_pieces = 0, 0
        for piece in pieces:
            reasoning_pieces += 1
            consumed += len(piece)
            if consumed >= close_end:
                break
        assert total[DeltaKind.REASONING] == 2 * reasoning_pieces - 1
    # The text is as it always was.
    assert "".join(d.text for d in deltas if d.kind is DeltaKind.ANSWER) == answer
