"""Boxed-answer extraction, normalisation and the majority vote."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fathom_desktop.engine.consensus import (
    consensus,
    extract_boxed,
    majority_vote,
    normalize_answer,
)
from fathom_desktop.engine.types import (
    ChatMessage,
    Finished,
    FinishReason,
    GenerationControl,
    GenerationStats,
    SamplingParams,
    StreamEvent,
)


@pytest.mark.parametrize(
    ("answer", "boxed"),
    [
        ("So the answer is $\\boxed{72}$.", "72"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1}, corrected: \\boxed{ 2 }", "2"),  # the last one counts
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\fbox{x^{2}}", "x^{2}"),
        ("no box here", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_boxed(answer: str, boxed: str | None):
    assert extract_boxed(answer) == boxed


@pytest.mark.parametrize(
    "variants",
    [
        ["72", "72.0", "\\$72", "$72$", "72.", "\\text{72}", "\\frac{144}{2}"],
        ["1000", "1,000", "1{,}000", "1000.00"],
        ["0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", "1/2"],
        ["-3", "-3.0", "- 3"],
        ["(A)", "\\text{(A)}", "\\textbf{(A)}"],
        ["45", "45^\\circ", "45^{\\circ}"],
    ],
)
def test_equivalent_answers_normalize_alike(variants: list[str]):
    assert len({normalize_answer(v) for v in variants}) == 1


def test_different_answers_stay_different():
    assert normalize_answer("72") != normalize_answer("27")
    assert normalize_answer("x+1") != normalize_answer("x-1")


def finished(answer: str) -> Finished:
    stats = GenerationStats(3, 10, 5, 0.1, 100.0, 10.0, FinishReason.STOP)
    return Finished(reasoning="r", answer=answer, stats=stats)


def test_majority_vote_counts_normalized_values_and_reports_first_spelling():
    samples = [
        finished(a)
        for a in ["\\boxed{72.0}", "\\boxed{5}", "\\boxed{72}", "none", "\\boxed{\\$72}"]
    ]
    result = majority_vote(samples)
    assert result.answer == "72.0"
    assert result.votes == {"72": 3, "5": 1}
    assert result.boxed == ("72.0", "5", "72", None, "\\$72")
    assert result.agreement == pytest.approx(3 / 5)


def test_tie_goes_to_the_earliest_answer_and_no_boxes_means_no_answer():
    assert majority_vote([finished("\\boxed{1}"), finished("\\boxed{2}")]).answer == "1"
    empty = majority_vote([finished("nothing")])
    assert empty.answer is None and empty.votes == {} and empty.agreement == 0.0


class ScriptedEngine:
    """Answers with a scripted boxed value per call and records the seeds it was given."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.seeds: list[int | None] = []

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        self.seeds.append(sampling.seed)
        yield finished(f"\\boxed{{{self.answers[len(self.seeds) - 1]}}}")


def test_consensus_samples_k_times_with_successive_seeds():
    engine = ScriptedEngine(["3", "4", "4"])
    result = consensus(engine, [ChatMessage("user", "?")], SamplingParams(seed=10), 3)  # type: ignore[arg-type]
    assert engine.seeds == [10, 11, 12]
    assert result.answer == "4" and len(result.samples) == 3


def test_consensus_stops_after_a_cancel():
    engine = ScriptedEngine(["1", "2", "3"])
    control = GenerationControl()
    control.cancel.set()
    result = consensus(engine, [ChatMessage("user", "?")], SamplingParams(), 3, control)  # type: ignore[arg-type]
    assert len(result.samples) == 1
