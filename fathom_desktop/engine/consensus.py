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
