"""A remote server's reply is split like the local engine's, whatever form and chunking it uses.

The four forms servers send: `reasoning_content` deltas (vLLM, llama.cpp server, DeepSeek),
`reasoning` deltas (vLLM's newer name), `<think>…</think>` inside `content`, and the R1 case
where the server's template opened `<think>` and `content` carries only `</think>`.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fathom_desktop.engine.reasoning import split_reasoning
from fathom_desktop.engine.remote_stream import ChoiceState
from fathom_desktop.engine.types import DeltaKind, FinishReason, Phase, PhaseChanged, TextDelta

REASONING = "Add: 3 + 4.\nones: 7\n"
ANSWER = "Tom has 7.\n\n\\boxed{7}"
# What the model wrote after the R1 prompt's `<think>\n`; the local engine splits this.
RAW = f"{REASONING}</think>\n\n{ANSWER}"
EXPECTED = split_reasoning(RAW, starts_in_reasoning=True)


def variants(reasoning: str, answer: str) -> dict[str, list[tuple[str, str]]]:
    """Each form as a stream of (field, character) in the order the server sends them."""

    def chars(field: str, text: str) -> list[tuple[str, str]]:
        return [(field, c) for c in text]

    return {
        "reasoning_content": chars("reasoning_content", reasoning)
        + chars("content", f"\n\n{answer}"),
        "reasoning": chars("reasoning", reasoning) + chars("content", f"\n\n{answer}"),
        "think tags in content": chars("content", f"<think>\n{reasoning}</think>\n\n{answer}"),
        "R1: only </think> in content": chars("content", f"{reasoning}</think>\n\n{answer}"),
    }


def deltas_for(stream: list[tuple[str, str]], cuts: tuple[int, ...]) -> list[dict[str, str]]:
    """Server chunks cut at `cuts`; a chunk spanning the field change carries both fields."""
    bounds = [0, *cuts, len(stream)]
    out = []
    for start, end in itertools.pairwise(bounds):
        delta: dict[str, str] = {}
        for field, char in stream[start:end]:
            delta[field] = delta.get(field, "") + char
        if delta:
            out.append(delta)
    return out


def split(deltas: list[dict[str, str]]) -> tuple[str, str, list[object]]:
    state = ChoiceState()
    events: list[object] = []
    for delta in deltas:
        events += state.on_delta(delta)
    tail, finished = state.finished(FinishReason.STOP, prompt_tokens=0)
    events += tail
    reasoning = "".join(
        e.text for e in events if isinstance(e, TextDelta) and e.kind is DeltaKind.REASONING
    )
    answer = "".join(
        e.text for e in events if isinstance(e, TextDelta) and e.kind is DeltaKind.ANSWER
    )
    assert (finished.reasoning, finished.answer) == (reasoning, answer)
    return reasoning, answer, events


@pytest.mark.parametrize("form", list(variants(REASONING, ANSWER)))
def test_every_form_cut_at_every_position_and_every_pair_of_positions(form: str) -> None:
    stream = variants(REASONING, ANSWER)[form]
    positions = range(1, len(stream))
    for cuts in itertools.chain(
        [()], ((i,) for i in positions), itertools.combinations(positions, 2)
    ):
        reasoning, answer, _ = split(deltas_for(stream, cuts))
        assert (reasoning, answer) == EXPECTED, (form, cuts)


@pytest.mark.parametrize("form", list(variants(REASONING, ANSWER)))
def test_one_character_per_chunk_announces_each_phase_once(form: str) -> None:
    stream = variants(REASONING, ANSWER)[form]
    _, _, events = split(deltas_for(stream, tuple(range(1, len(stream)))))
    phases = [e.phase for e in events if isinstance(e, PhaseChanged)]
    assert phases == [Phase.REASONING, Phase.ANSWER]
    # Every chunk's token is counted exactly once, on the delta that carried its text.
    assert sum(e.tokens for e in events if isinstance(e, TextDelta)) == len(stream)


_TEXT = st.text(alphabet="ab 7\n+=.<>/\\{}", min_size=1, max_size=40).filter(
    lambda t: "think>" not in t and t.strip()
)


@settings(max_examples=150, deadline=None)
@given(reasoning=_TEXT, answer=_TEXT, data=st.data())
def test_any_text_any_chunking_matches_the_local_split(reasoning, answer, data) -> None:
    expected = split_reasoning(f"{reasoning}</think>\n\n{answer}", starts_in_reasoning=True)
    for form, stream in variants(reasoning, answer).items():
        cuts = data.draw(
            st.lists(st.integers(1, len(stream) - 1), unique=True, max_size=12).map(sorted)
        )
        reasoning_out, answer_out, _ = split(deltas_for(stream, tuple(cuts)))
        assert (reasoning_out, answer_out) == expected, form


def test_a_reply_that_never_closes_its_reasoning_stays_reasoning() -> None:
    reasoning, answer, _ = split([{"content": "Still adding 3 and"}, {"content": " 4"}])
    assert (reasoning, answer) == ("Still adding 3 and 4", "")
    reasoning, answer, _ = split([{"reasoning_content": "Still adding"}])
    assert (reasoning, answer) == ("Still adding", "")
