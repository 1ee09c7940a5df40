"""What a chat session reports: its one state, the payloads of its signals, and the turn it runs.

Widget-free, like the session: the window reads these to render, the session fills them in.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import StrEnum

from fathom_desktop.engine.answers import extract_boxed
from fathom_desktop.engine.types import GenerationStats, Phase
from fathom_desktop.gui.worker import GenerationRequest, SampleProgress
from fathom_desktop.history import MessageStatus, StoredMessage
from fathom_desktop.history.samples import SampleRecord, VoteRecord

# Replies that ended before the model finished them, which Continue can take up again.
CONTINUABLE = frozenset({MessageStatus.STOPPED, MessageStatus.INTERRUPTED, MessageStatus.ERROR})


class SessionState(StrEnum):
    NO_MODEL = "no model"
    LOADING = "loading"
    READY = "ready"
    READING_PROMPT = "reading prompt"
    REASONING = "reasoning"
    ANSWERING = "answering"
    STOPPING = "stopping"
    ENGINE_FAILED = "engine failed"  # the engine's process died; the next message reloads it

    @property
    def replying(self) -> bool:
        return self in _REPLYING

    @property
    def takes_messages(self) -> bool:
        """A message sent now is answered (after a reload, when the engine failed)."""
        return self in (SessionState.READY, SessionState.ENGINE_FAILED)


_REPLYING = frozenset(
    {
        SessionState.READING_PROMPT,
        SessionState.REASONING,
        SessionState.ANSWERING,
        SessionState.STOPPING,
    }
)


# -- what the session tells the window ------------------------------------------------------------


@dataclass(frozen=True)
class ConversationShown:
    """Show this conversation (None: a new, empty one) and its messages."""

    conversation_id: int | None
    title: str
    messages: tuple[StoredMessage, ...] = ()


@dataclass(frozen=True)
class ReplyStarted:
    message_id: int
    samples: int
    # A continued reply starts from its saved text; `replaces` is the stored reply it takes over.
    reasoning: str = ""
    answer: str = ""
    reasoning_tokens: int = 0
    reasoning_seconds: float = 0.0
    replaces: int | None = None


@dataclass(frozen=True)
class ReplyText:
    """New text of the reply, with its running token counts (the engine's own counts). A
    consensus reports its samples' progress instead (`ConsensusProgress`)."""

    message_id: int
    reasoning: str
    answer: str
    reasoning_tokens: int
    answer_tokens: int


@dataclass(frozen=True)
class TokenUsage:
    """How much of the context the current turn uses, in the engine's tokens."""

    prompt: int = 0
    reasoning: int = 0
    answer: int = 0
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class ReplyEnded:
    message_id: int
    status: MessageStatus
    reasoning: str
    answer: str
    # What the history keeps for the reply: its GenerationStats, the vote, or the error.
    record: dict
    stats: GenerationStats | None = None
    error: str | None = None
    # A consensus reply's samples, in sampling order (the vote is in `record["consensus"]`).
    samples: tuple[SampleRecord, ...] = ()


@dataclass(frozen=True)
class EngineFailure:
    """The engine's process died; `fewer_gpu_layers` is the layer count to retry with, if any."""

    message: str
    while_loading: bool
    fewer_gpu_layers: int | None = None


@dataclass
class LiveSample:
    """One consensus sample while it runs: everything it wrote, its counts and where it is."""

    index: int
    phase: Phase = Phase.PROMPT
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    finished: SampleRecord | None = None

    def update(self, progress: SampleProgress) -> None:
        if progress.reasoning:
            self.reasoning.append(progress.reasoning)
        if progress.answer:
            self.answer.append(progress.answer)
        self.reasoning_tokens = progress.reasoning_tokens
        self.answer_tokens = progress.answer_tokens
        self.phase = progress.phase
        self.finished = progress.finished or self.finished

    def record(self) -> SampleRecord:
        """As finished, or as far as it got (no finish reason)."""
        if self.finished is not None:
            return self.finished
        answer = "".join(self.answer)
        return SampleRecord(
            index=self.index,
            reasoning="".join(self.reasoning),
            answer=answer,
            boxed=extract_boxed(answer),
            reasoning_tokens=self.reasoning_tokens,
            answer_tokens=self.answer_tokens,
        )


@dataclass
class Turn:
    """The reply being generated."""

    request: GenerationRequest
    conversation_id: int
    message_id: int
    # The saved text a continued reply starts from, and its reasoning's token count.
    base_reasoning: str = ""
    base_answer: str = ""
    base_reasoning_tokens: int = 0
    base_reasoning_seconds: float = 0.0
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    reasoning_started: float | None = None
    answer_started: float | None = None
    answered_early: bool = False
    live_samples: dict[int, LiveSample] = field(default_factory=dict)  # consensus only

    @property
    def samples(self) -> int:
        return self.request.samples

    def all_reasoning(self) -> str:
        return self.base_reasoning + "".join(self.reasoning)

    def all_answer(self) -> str:
        return self.base_answer + "".join(self.answer)

    def sample_records(self) -> tuple[SampleRecord, ...]:
        """A consensus turn's samples as far as they got, in sampling order."""
        return tuple(sample.record() for _, sample in sorted(self.live_samples.items()))


def stats_record(
    stats: GenerationStats, reasoning_seconds: float | None, vote: VoteRecord | None = None
) -> dict:
    record = dataclasses.asdict(stats)
    record["finish_reason"] = stats.finish_reason.value
    if reasoning_seconds is not None:
        record["reasoning_seconds"] = round(reasoning_seconds, 2)
    if vote is not None:
        record["consensus"] = vote.to_dict()
    return record


def fewer_gpu_layers(layers: int | None) -> int | None:
    """Half the layers, never below 0; None when no layers were on the GPU to begin with."""
    if layers is None or layers <= 0:
        return None
    return max(0, layers // 2)
