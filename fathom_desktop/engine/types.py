"""The engine's typed API: what goes in (messages, options) and what comes out (events).

Everything outside `fathom_desktop.engine` talks to the model through these types only, so the
GUI and the tests can swap in a fake engine that honours the same contract.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from fathom_desktop.engine.answers import normalize_answer

if TYPE_CHECKING:
    from collections.abc import Callable

# Fathom-R1-14B's own recommendations (generation_config.json and the model card).
FATHOM_N_CTX = 16384
FATHOM_TEMPERATURE = 0.6
FATHOM_TOP_P = 0.95
FATHOM_EVAL_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

KvCacheType = Literal["f16", "q8_0", "q4_0"]
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    # Earlier assistant turns keep their reasoning for display; it is never sent back to the model.
    reasoning: str | None = None
    # An unfinished reply, last in the conversation: the engine continues it where it ended
    # (its reasoning, then its answer), as if it had never stopped. See engine/prompt.py.
    partial: bool = False


@dataclass(frozen=True)
class LoadOptions:
    model_path: Path
    n_ctx: int = FATHOM_N_CTX
    # None means "as many as the VRAM planner says fit".
    n_gpu_layers: int | None = None
    # None means "on when the build supports it".
    flash_attn: bool | None = None
    kv_cache_type: KvCacheType = "f16"
    n_threads: int | None = None


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = FATHOM_TEMPERATURE
    top_p: float = FATHOM_TOP_P
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    # None: until the context is full.
    max_tokens: int | None = None
    # Reasoning tokens after which the engine closes the reasoning and asks for the answer.
    thinking_budget: int | None = None


class DeltaKind(StrEnum):
    REASONING = "reasoning"
    ANSWER = "answer"


class Phase(StrEnum):
    PROMPT = "prompt"  # llama.cpp is evaluating the prompt (Stop ends it between graph steps)
    REASONING = "reasoning"
    ANSWER = "answer"


class FinishReason(StrEnum):
    STOP = "stop"  # the model ended its turn
    LENGTH = "length"  # max_tokens reached
    CONTEXT = "context"  # the context window is full
    CANCELLED = "cancelled"  # the user pressed Stop
    INTERRUPTED = "interrupted"  # a remote server's stream broke off; the text so far is kept


@dataclass(frozen=True)
class TextDelta:
    kind: DeltaKind
    text: str
    # Tokens the engine decoded for this piece of text (the engine merges and holds back text,
    # so a delta can carry several tokens, or none). Every counter in the window sums these.
    tokens: int = 0


@dataclass(frozen=True)
class PhaseChanged:
    phase: Phase
    prompt_tokens: int = 0


@dataclass(frozen=True)
class ContextTrimmed:
    """Older turns were left out so that the new message fits the context window."""

    dropped_messages: int


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    time_to_first_token_s: float
    prompt_tokens_per_s: float
    decode_tokens_per_s: float
    finish_reason: FinishReason
    dropped_messages: int = 0
    thinking_closed_early: bool = False


@dataclass(frozen=True)
class Finished:
    reasoning: str
    answer: str
    stats: GenerationStats


StreamEvent = TextDelta | PhaseChanged | ContextTrimmed | Finished


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


@dataclass
class GenerationControl:
    """Signals another thread may raise while a generation runs; checked between tokens."""

    cancel: threading.Event = field(default_factory=threading.Event)
    answer_now: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class LoadReport:
    model_path: Path
    n_ctx: int
    n_gpu_layers: int  # layers llama.cpp put on the GPU, 0..n_layers
    # Offloadable layers, as llama.cpp counts n_gpu_layers: the transformer blocks plus the
    # output layer (49 for Fathom-R1-14B's 48 blocks), so "n_gpu_layers/n_layers layers" is true.
    n_layers: int
    flash_attn: bool
    kv_cache_type: KvCacheType
    gpu_offload_supported: bool
    file_type: str  # e.g. "Q4_K_M"
    notes: tuple[str, ...] = ()  # e.g. "retried with 31 GPU layers after running out of VRAM"


class ChatEngine(Protocol):
    """What the GUI and the terminal chat need from an engine (the real one or a fake)."""

    def load(self, options: LoadOptions) -> LoadReport: ...

    def close(self) -> None: ...

    @property
    def loaded(self) -> LoadReport | None: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]: ...

    def consensus(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl | None = None,
        on_event: Callable[[int, StreamEvent], None] | None = None,
        *,
        parallel: int | None = None,
    ) -> ConsensusResult:
        """Sample `k` replies and vote on their boxed answers; `on_event(sample, event)` sees
        each sample's stream. `parallel` caps how many samples decode at once (None: the engine
        chooses)."""
        ...
