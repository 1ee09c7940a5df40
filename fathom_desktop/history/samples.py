"""How a consensus reply is kept: every sample (the `samples` column) and the vote (its stats).

A consensus reply's message holds the winning sample's reasoning and answer, so everything that
reads messages shows it like any reply; `samples` keeps all of them, in sampling order, and the
stats' `consensus` entry keeps the vote, the winner and how many samples decoded at once. Reads
are tolerant: a record from an older or damaged file gives what it can, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fathom_desktop.engine.answers import extract_boxed, normalize_answer
from fathom_desktop.engine.types import ConsensusResult, Finished


@dataclass(frozen=True)
class SampleRecord:
    """One sample as the history keeps it. `finish_reason` is None while it still runs."""

    index: int
    reasoning: str
    answer: str
    boxed: str | None
    reasoning_tokens: int
    answer_tokens: int
    finish_reason: str | None = None
    thinking_closed_early: bool = False
    decode_tokens_per_s: float = 0.0

    @classmethod
    def finished(cls, index: int, sample: Finished) -> SampleRecord:
        stats = sample.stats
        return cls(
            index=index,
            reasoning=sample.reasoning,
            answer=sample.answer,
            boxed=extract_boxed(sample.answer),
            reasoning_tokens=stats.reasoning_tokens,
            answer_tokens=stats.answer_tokens,
            finish_reason=stats.finish_reason.value,
            thinking_closed_early=stats.thinking_closed_early,
            decode_tokens_per_s=round(stats.decode_tokens_per_s, 2),
        )

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "boxed": self.boxed,
            "reasoning_tokens": self.reasoning_tokens,
            "answer_tokens": self.answer_tokens,
            "finish_reason": self.finish_reason,
            "thinking_closed_early": self.thinking_closed_early,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, object], index: int) -> SampleRecord:
        def text(key: str) -> str:
            value = record.get(key)
            return value if isinstance(value, str) else ""

        def count(key: str) -> int:
            value = record.get(key)
            return value if isinstance(value, int) and value >= 0 else 0

        boxed = record.get("boxed")
        finish = record.get("finish_reason")
        rate = record.get("decode_tokens_per_s")
        return cls(
            index=index,
            reasoning=text("reasoning"),
            answer=text("answer"),
            boxed=boxed if isinstance(boxed, str) else None,
            reasoning_tokens=count("reasoning_tokens"),
            answer_tokens=count("answer_tokens"),
            finish_reason=finish if isinstance(finish, str) else None,
            thinking_closed_early=record.get("thinking_closed_early") is True,
            decode_tokens_per_s=float(rate) if isinstance(rate, int | float) else 0.0,
        )

    @property
    def tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens


def stored_samples(samples: Sequence[Mapping[str, object]] | None) -> list[SampleRecord]:
    """The samples of a stored message, in sampling order ([] when it kept none)."""
    return [SampleRecord.from_dict(record, index) for index, record in enumerate(samples or ())]


@dataclass(frozen=True)
class VoteRecord:
    """The vote as kept in a consensus reply's stats (`stats["consensus"]`)."""

    answer: str | None  # the winning boxed value as first written; None: nothing was boxed
    votes: dict[str, int]  # per normalized value, most votes first
    samples: int  # samples that took part
    requested: int  # samples asked for (more than `samples` when stopped)
    winner: int | None  # the index of the sample shown as the answer
    parallel: int
    parallel_reason: str
    # Every sample's tokens together, and the wall-clock time they took together.
    tokens: int = 0
    seconds: float = 0.0

    @classmethod
    def of(cls, result: ConsensusResult, requested: int, seconds: float = 0.0) -> VoteRecord:
        winner = next(i for i, sample in enumerate(result.samples) if sample is result.winner)
        return cls(
            answer=result.answer,
            votes=dict(result.votes),
            samples=len(result.samples),
            requested=requested,
            winner=winner,
            parallel=result.parallel,
            parallel_reason=result.parallel_reason,
            tokens=sum(s.stats.reasoning_tokens + s.stats.answer_tokens for s in result.samples),
            seconds=round(seconds, 2),
        )

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "votes": self.votes,
            "samples": self.samples,
            "requested": self.requested,
            "winner": self.winner,
            "parallel": self.parallel,
            "parallel_reason": self.parallel_reason,
            "tokens": self.tokens,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, object] | None) -> VoteRecord | None:
        """The vote of a stored reply; None when it has none (a record from before the winner
        and P were kept gives None for the winner and 1 for P)."""
        if not isinstance(record, Mapping):
            return None
        votes_in = record.get("votes")
        votes = {
            str(key): value
            for key, value in (votes_in.items() if isinstance(votes_in, Mapping) else ())
            if isinstance(value, int)
        }
        answer = record.get("answer")
        samples = record.get("samples")
        count = samples if isinstance(samples, int) else sum(votes.values())
        requested = record.get("requested")
        winner = record.get("winner")
        parallel = record.get("parallel")
        reason = record.get("parallel_reason")
        tokens = record.get("tokens")
        seconds = record.get("seconds")
        return cls(
            answer=answer if isinstance(answer, str) else None,
            votes=votes,
            samples=count,
            requested=requested if isinstance(requested, int) else count,
            winner=winner if isinstance(winner, int) else None,
            parallel=parallel if isinstance(parallel, int) and parallel >= 1 else 1,
            parallel_reason=reason if isinstance(reason, str) else "",
            tokens=tokens if isinstance(tokens, int) else 0,
            seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
        )

    @property
    def tokens_per_s(self) -> float:
        """All samples' tokens over the time they took together."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def agreement(self) -> float:
        """The share of samples that voted for the winner (0 when nothing was boxed)."""
        if self.answer is None or not self.samples:
            return 0.0
        return self.votes.get(normalize_answer(self.answer), 0) / self.samples


def vote_labels(samples: Sequence[SampleRecord]) -> dict[str, str]:
    """Each normalized value as a sample first wrote it (what the chart and exports show)."""
    labels: dict[str, str] = {}
    for sample in samples:
        if sample.boxed is not None:
            labels.setdefault(normalize_answer(sample.boxed), sample.boxed)
    return labels


def voted_for(sample: SampleRecord) -> str | None:
    """The normalized value this sample voted for; None when it boxed nothing."""
    return normalize_answer(sample.boxed) if sample.boxed is not None else None
