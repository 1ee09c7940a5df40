"""Self-consistency: sample k answers and majority-vote their `\\boxed{...}` values."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from fathom_desktop.engine.errors import SettingsError
from fathom_desktop.engine.types import (
    ChatEngine,
    ChatMessage,
    Finished,
    FinishReason,
    GenerationControl,
    SamplingParams,
    StreamEvent,
)

_BOXED_OPENERS = ("\\boxed{", "\\fbox{")


def extract_boxed(answer: str) -> str | None:
    """The content of the last `\\boxed{...}` in `answer` (nested braces allowed), or None."""
    best: tuple[int, str] | None = None
    for opener in _BOXED_OPENERS:
        start = answer.rfind(opener)
        while start >= 0:
            content = _balanced(answer, start + len(opener))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            start = answer.rfind(opener, 0, start)
    return None if best is None else best[1].strip()


def _balanced(text: str, begin: int) -> str | None:
    """Text from `begin` up to the brace that closes the one just before it; None if unclosed."""
    depth = 1
    index = begin
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # an escaped brace such as \{ does not count
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
        index += 1
    return None


_UNWRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"^-?\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\$", "$", "\\%", "%", " ")
_DEGREES = ("^\\circ", "^{\\circ}", "°")


def normalize_answer(value: str) -> str:
    """A comparison key: "72", "72.0", "\\$72" and "\\frac{144}{2}" all give "72"."""
    text = value.strip()
    previous = None
    while previous != text:
        previous = text
        text = _UNWRAP.sub(r"\1", text)
    for noise in (*_NOISE, *_DEGREES):
        text = text.replace(noise, "")
    text = text.replace("{,}", ",")  # LaTeX thousands separator
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    number = _as_fraction(text)
    if number is not None:
        return str(number)
    return text


def _as_fraction(text: str) -> Fraction | None:
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if _NUMBER.match(text):
        return Fraction(text)
    match = _FRAC.match(text)
    if match and int(match.group(2)) != 0:
        sign = -1 if text.startswith("-") else 1
        return sign * Fraction(int(match.group(1)), int(match.group(2)))
    if text.count("/") == 1:
        numerator, denominator = text.split("/")
        if _NUMBER.match(numerator) and _NUMBER.match(denominator) and Fraction(denominator) != 0:
            return Fraction(numerator) / Fraction(denominator)
    return None


@dataclass(frozen=True)
class ConsensusResult:
    # The winning boxed value as the model first wrote it; None when no sample boxed anything.
    answer: str | None
    # Votes per normalized value, most votes first.
    votes: dict[str, int]
    # Each sample's boxed value (None where it boxed nothing), in sampling order.
    boxed: tuple[str | None, ...]
    samples: tuple[Finished, ...]
    # How many samples decoded at once, and the planner's one-line reason for it.
    parallel: int = 1
    parallel_reason: str = "one after another"

    @property
    def winner(self) -> Finished:
        """The first sample whose boxed answer won the vote (the first sample when none boxed)."""
        if self.answer is not None:
            key = normalize_answer(self.answer)
            for sample, value in zip(self.samples, self.boxed, strict=True):
                if value is not None and normalize_answer(value) == key:
                    return sample
        return self.samples[0]

    @property
    def agreement(self) -> float:
        """Share of samples that voted for the winner."""
        if self.answer is None or not self.samples:
            return 0.0
        return self.votes[normalize_answer(self.answer)] / len(self.samples)


def majority_vote(samples: Sequence[Finished]) -> ConsensusResult:
    boxed = tuple(extract_boxed(sample.answer) for sample in samples)
    keys = [normalize_answer(value) for value in boxed if value is not None]
    counts = Counter(keys)
    # Counter.most_common keeps first-seen order among ties, so the earliest answer wins a tie.
    votes = dict(counts.most_common())
    answer = None
    if votes:
        winner = next(iter(votes))
        answer = next(v for v in boxed if v is not None and normalize_answer(v) == winner)
    return ConsensusResult(answer=answer, votes=votes, boxed=boxed, samples=tuple(samples))


MAX_SAMPLES = 64  # Fathom-R1-14B's model card reports cons@64


def check_sample_count(k: int) -> None:
    if not 1 <= k <= MAX_SAMPLES:
        raise SettingsError(f"A consensus takes 1 to {MAX_SAMPLES} samples, not {k}.")


def consensus(
    engine: ChatEngine,
    messages: list[ChatMessage],
    sampling: SamplingParams,
    k: int,
    control: GenerationControl | None = None,
    on_event: Callable[[int, StreamEvent], None] | None = None,
) -> ConsensusResult:
    """Sample `k` replies and vote. Seeds run seed, seed+1, ... when a seed is given.

    `on_event(sample_index, event)` sees every stream event, for progress displays. A cancel
    stops after the current sample; the vote covers the samples that finished.
    """
    check_sample_count(k)
    control = control or GenerationControl()
    finished: list[Finished] = []
    for index in range(k):
        seed = None if sampling.seed is None else sampling.seed + index
        for event in engine.generate(messages, replace(sampling, seed=seed), control):
            if on_event is not None:
                on_event(index, event)
            if isinstance(event, Finished):
                finished.append(event)
        control.answer_now.clear()  # "answer now" applies to the sample it was pressed in
        if control.cancel.is_set() or (
            finished and finished[-1].stats.finish_reason is FinishReason.CANCELLED
        ):
            break
    return majority_vote(finished)
