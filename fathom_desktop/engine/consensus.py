"""Self-consistency: sample k answers and majority-vote their `\\boxed{...}` values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

from fathom_desktop.engine.answers import extract_boxed, normalize_answer
from fathom_desktop.engine.errors import SettingsError
from fathom_desktop.engine.types import (
    ChatEngine,
    ChatMessage,
    ConsensusResult,
    Finished,
    FinishReason,
    GenerationControl,
    SamplingParams,
    StreamEvent,
)

# Where consensus events go: (sample index, event).
EventSink = Callable[[int, StreamEvent], None]


class SampleOrder:
    """Passes events on sample by sample, as the sequential path produces them.

    The samples decode together, but a consumer written for one sample after another (a view
    that starts a new section when the sample index changes) gets sample 0's events live, then
    sample 1's (held while sample 0 ran, then live), and so on. Nothing is dropped or reordered
    within a sample.
    """

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._current = 0
        self._held: dict[int, list[StreamEvent]] = {}
        self._finished: set[int] = set()

    def __call__(self, index: int, event: StreamEvent) -> None:
        if index != self._current:
            self._held.setdefault(index, []).append(event)
            if isinstance(event, Finished):
                self._finished.add(index)
            return
        self._sink(index, event)
        if isinstance(event, Finished):
            self._next()

    def _next(self) -> None:
        while True:
            self._current += 1
            for event in self._held.pop(self._current, []):
                self._sink(self._current, event)
            if self._current not in self._finished:
                return

    def flush(self) -> None:
        """Whatever is still held (a cancel ends samples out of order), in sample order."""
        for index in sorted(self._held):
            for event in self._held.pop(index):
                self._sink(index, event)


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


# The vote's result is an engine type (ChatEngine.consensus returns it); it is kept importable
# from here, beside the vote, as are the answer helpers the vote uses.
__all__ = [
    "ConsensusResult",
    "consensus",
    "extract_boxed",
    "majority_vote",
    "normalize_answer",
]
