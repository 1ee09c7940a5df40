"""The reasoning/answer split, for every way the text can arrive."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fathom_desktop.engine.reasoning import (
    ReasoningSplitter,
    prompt_opens_reasoning,
    split_reasoning,
)
from fathom_desktop.engine.types import DeltaKind, TextDelta


def feed_chunks(chunks: list[str], *, starts_in_reasoning: bool) -> list[TextDelta]:
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    deltas: list[TextDelta] = []
    for chunk in chunks:
        deltas += splitter.feed(chunk)
    return deltas + splitter.finish()


def joined(deltas: list[TextDelta]) -> tuple[str, str]:
    reasoning = "".join(d.text for d in deltas if d.kind is DeltaKind.REASONING)
    answer = "".join(d.text for d in deltas if d.kind is DeltaKind.ANSWER)
    return reasoning, answer


# -- the cases a user sees ------------------------------------------------------------------


def test_current_template_reasoning_then_answer_without_tag_whitespace():
    text = "Add the numbers.\n3 + 4 = 7.\n</think>\n\nThe answer is $\\boxed{7}$."
    assert split_reasoning(text, starts_in_reasoning=True) == (
        "Add the numbers.\n3 + 4 = 7.",
        "The answer is $\\boxed{7}$.",
    )


def test_legacy_template_model_opens_think_itself():
    text = "<think>\nLet me see.\n</think>\n\n42"
    assert split_reasoning(text, starts_in_reasoning=False) == ("Let me see.", "42")


def test_legacy_template_leading_whitespace_before_think():
    assert split_reasoning("\n\n<think>x</think>y", starts_in_reasoning=False) == ("x", "y")


def test_no_reasoning_at_all_is_all_answer():
    assert split_reasoning("Just 42, no thinking.", starts_in_reasoning=False) == (
        "",
        "Just 42, no thinking.",
    )


def test_reasoning_that_never_closes_stays_reasoning():
    assert split_reasoning("Still thinking about", starts_in_reasoning=True) == (
        "Still thinking about",
        "",
    )


def test_unfinished_closing_tag_at_the_end_is_kept_as_reasoning_text():
    assert split_reasoning("hmm </thi", starts_in_reasoning=True) == ("hmm </thi", "")


def test_repeated_think_opener_after_template_opened_it_is_dropped():
    assert split_reasoning("<think>\nidea\n</think>\n\nok", starts_in_reasoning=True) == (
        "idea",
        "ok",
    )


def test_text_that_only_resembles_a_tag_is_not_swallowed():
    assert split_reasoning("a </thinking> b</think>c", starts_in_reasoning=True) == (
        "a </thinking> b",
        "c",
    )
    assert split_reasoning("<thinker> hi", starts_in_reasoning=False) == ("", "<thinker> hi")


def test_tag_split_across_chunks():
    deltas = feed_chunks(["plan", "\n</", "thi", "nk>", "\n", "\nFinal"], starts_in_reasoning=True)
    assert joined(deltas) == ("plan", "Final")


def test_reasoning_streams_before_the_tag_arrives_and_holds_only_what_is_ambiguous():
    splitter = ReasoningSplitter(starts_in_reasoning=True)
    assert splitter.feed("first step ") == [TextDelta(DeltaKind.REASONING, "first step")]
    # A possible tag and the whitespace before it wait; the rest is shown at once.
    assert splitter.feed("done \n</th") == [TextDelta(DeltaKind.REASONING, " done")]
    assert splitter.feed("ink>\n\nAnswer") == [TextDelta(DeltaKind.ANSWER, "Answer")]
    assert splitter.phase is DeltaKind.ANSWER


def test_phase_is_unknown_until_a_legacy_reply_shows_its_hand():
    splitter = ReasoningSplitter(starts_in_reasoning=False)
    assert splitter.feed("\n<thi") == []
    assert splitter.phase is None
    splitter.feed("nk>")
    assert splitter.phase is DeltaKind.REASONING


def test_prompt_opens_reasoning_detects_the_current_template():
    assert prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜><think>\n")
    assert not prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜>")


# -- properties -----------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<",
        "</",
        "</th",
        "<thi",
        "think>",
        ">",
        "\n",
        "\n\n",
        " ",
        "\t",
        "a",
        "x = 1",
        "é",
        "数学",
        "🦜",
        "\\boxed{7}",
        "ink",
    ]
)
TEXTS = st.lists(FRAGMENTS, max_size=30).map("".join)


@st.composite
def text_and_chunks(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(TEXTS)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    chunks, start = [], 0
    for cut in cuts:
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return text, chunks


@settings(max_examples=400, deadline=None)
@given(text_and_chunks(), st.booleans())
def test_any_chunking_gives_the_same_split(case: tuple[str, list[str]], starts: bool):
    text, chunks = case
    assert joined(feed_chunks(chunks, starts_in_reasoning=starts)) == split_reasoning(
        text, starts_in_reasoning=starts
    )


@settings(max_examples=300, deadline=None)
@given(text_and_chunks(), st.booleans())
def test_reasoning_never_shows_the_closing_tag_and_sections_are_trimmed(
    case: tuple[str, list[str]], starts: bool
):
    _, chunks = case
    deltas = feed_chunks(chunks, starts_in_reasoning=starts)
    reasoning, answer = joined(deltas)
    assert "</think>" not in reasoning
    assert reasoning == reasoning.strip()
    assert answer == answer.lstrip()
    assert all(delta.text for delta in deltas)
    # Reasoning always comes before the answer, never after it.
    kinds = [delta.kind for delta in deltas]
    assert kinds == sorted(kinds, key=lambda kind: kind is DeltaKind.ANSWER)


PLAIN = st.text(
    alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=40
).map(str.strip)
SPACE = st.sampled_from(["", "\n", "\n\n", " ", " \n"])


@settings(max_examples=300, deadline=None)
@given(PLAIN, PLAIN, SPACE, SPACE, SPACE, st.booleans(), st.data())
def test_well_formed_replies_split_into_exactly_their_parts(
    reasoning: str, answer: str, pad1: str, pad2: str, pad3: str, legacy: bool, data: st.DataObject
):
    opener = "<think>" + pad1 if legacy else ""
    text = f"{opener}{reasoning}{pad2}</think>{pad3}{answer}"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert joined(feed_chunks(chunks, starts_in_reasoning=not legacy)) == (reasoning, answer)
