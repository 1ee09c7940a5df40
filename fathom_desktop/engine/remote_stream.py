"""Reading an OpenAI-compatible chat stream into the engine's events, one choice at a time.

Servers disagree on where the reasoning goes, so every form is brought back to the one stream the
local engine splits, and the same `ReasoningSplitter` splits it:

- `delta.reasoning_content` (DeepSeek's API, vLLM's reasoning parsers, llama.cpp's server) or
  `delta.reasoning` (vLLM's newer name, OpenRouter): reasoning text; the first `content` after
  it means the reasoning ended, as `</think>` does in the raw text;
- `<think>…</think>` inside `content` (a server without a reasoning parser, a legacy template);
- the R1 case: the server's template already opened `<think>`, so `content` carries the
  reasoning and only `</think>`.

Whatever the chunking, the split is the one the local engine makes of the same text.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from fathom_desktop.engine.reasoning import THINK_CLOSE, ReasoningSplitter
from fathom_desktop.engine.types import (
    DeltaKind,
    Finished,
    FinishReason,
    GenerationStats,
    Phase,
    PhaseChanged,
    StreamEvent,
    TextDelta,
)

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "eos": FinishReason.STOP}


class RemoteReasoning:
    """Typed deltas from a server's `reasoning*` and `content` fields."""

    def __init__(self, *, template_opens_reasoning: bool = True) -> None:
        # R1 templates open `<think>` in the prompt; the splitter also drops a repeated one, so
        # a model (or server) that writes `<think>` itself is split correctly too.
        self._splitter = ReasoningSplitter(starts_in_reasoning=template_opens_reasoning)
        self._reasoning_by_field = False
        self._closed = False

    @property
    def phase(self) -> DeltaKind | None:
        return self._splitter.phase

    def feed(self, reasoning: str | None, content: str | None) -> list[TextDelta]:
        if self._closed:
            # After "answer now" everything is answer, even where a server's reasoning parser,
            # not seeing `</think>` in the continuation, labels it reasoning.
            return self._splitter.feed((reasoning or "") + (content or ""))
        text = ""
        if reasoning:
            self._reasoning_by_field = True
            text += reasoning
        if content:
            if self._reasoning_by_field and not self._closed:
                text += THINK_CLOSE  # the server moved from its reasoning field to content
            self._closed = self._closed or self._reasoning_by_field
            text += content
        return self._splitter.feed(text)

    def close_reasoning(self) -> list[TextDelta]:
        """The reasoning was ended on the client's side ("answer now"); content is answer."""
        self._closed = True
        return self._splitter.feed(f"\n{THINK_CLOSE}\n\n")

    def finish(self) -> list[TextDelta]:
        return self._splitter.finish()


@dataclass
class ChoiceState:
    """One choice of a streamed reply: its text, token counts and how it ended."""

    started: float = field(default_factory=time.perf_counter)
    splitter: RemoteReasoning = field(default_factory=RemoteReasoning)
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    reasoning_chunks: int = 0
    answer_chunks: int = 0
    first_token_at: float | None = None
    finish: FinishReason | None = None
    announced: DeltaKind | None = None
    closed_early: bool = False
    usage: dict[str, Any] | None = None
    _owed_tokens: int = 0

    def on_delta(self, delta: dict[str, Any]) -> list[StreamEvent]:
        reasoning = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
        content = _text(delta.get("content"))
        if not reasoning and not content:
            return []
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        # Servers send one token per chunk; count it for the phase it was sent in.
        if reasoning or self.splitter.phase is DeltaKind.REASONING:
            self.reasoning_chunks += 1
        else:
            self.answer_chunks += 1
        self._owed_tokens += 1
        return self.events(self.splitter.feed(reasoning, content))

    def events(self, deltas: list[TextDelta]) -> list[StreamEvent]:
        """Record deltas and announce phase changes, as the local engine does."""
        out: list[StreamEvent] = []
        for delta in deltas:
            if delta.kind is not self.announced:
                self.announced = delta.kind
                out.append(PhaseChanged(Phase(delta.kind.value)))
            (self.reasoning if delta.kind is DeltaKind.REASONING else self.answer).append(
                delta.text
            )
            # Text the splitter held back is paid for by the delta that finally carries it.
            out.append(TextDelta(delta.kind, delta.text, tokens=self._owed_tokens))
            self._owed_tokens = 0
        phase = self.splitter.phase
        if phase is not None and phase is not self.announced:
            self.announced = phase
            out.append(PhaseChanged(Phase(phase.value)))
        return out

    def on_finish_reason(self, reason: str | None) -> None:
        if reason:
            self.finish = _FINISH.get(reason, FinishReason.STOP)

    def finished(
        self, finish: FinishReason, prompt_tokens: int
    ) -> tuple[list[StreamEvent], Finished]:
        events = self.events(self.splitter.finish())
        usage = self.usage or {}
        completion = usage.get("completion_tokens")
        details = usage.get("completion_tokens_details") or {}
        reasoning_tokens = details.get("reasoning_tokens")
        if isinstance(completion, int) and isinstance(reasoning_tokens, int):
            answer_tokens = max(0, completion - reasoning_tokens)
        elif isinstance(completion, int):  # no split from the server: share it out as counted
            reasoning_tokens = min(completion, self.reasoning_chunks)
            answer_tokens = completion - reasoning_tokens
        else:
            reasoning_tokens, answer_tokens = self.reasoning_chunks, self.answer_chunks
        now = time.perf_counter()
        first = self.first_token_at or now
        decoded = reasoning_tokens + answer_tokens
        stats = GenerationStats(
            prompt_tokens=int(usage.get("prompt_tokens") or prompt_tokens),
            reasoning_tokens=reasoning_tokens,
            answer_tokens=answer_tokens,
            time_to_first_token_s=first - self.started,
            prompt_tokens_per_s=0.0,  # not observable from outside the server
            decode_tokens_per_s=(decoded - 1) / (now - first)
            if now > first and decoded > 1
            else 0.0,
            finish_reason=finish,
            thinking_closed_early=self.closed_early,
        )
        return events, Finished("".join(self.reasoning), "".join(self.answer), stats)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class StreamCloser:
    """Ends a streaming response the moment Stop (or Answer now) is pressed, even while a read
    is blocked.

    Shutting the socket down wakes the reading thread at once and tells the server the client is
    gone, so it stops generating too; closing alone would wait for the next byte.
    """

    def __init__(self, response: httpx2.Response, should_stop: Callable[[], bool]) -> None:
        self._finished = threading.Event()
        stream = response.extensions.get("network_stream")
        self._socket = stream.get_extra_info("socket") if stream is not None else None
        self._should_stop = should_stop
        self._thread = threading.Thread(target=self._watch, daemon=True, name="remote-stop")
        self._thread.start()

    def _watch(self) -> None:
        while not self._finished.wait(0.02):
            if self._should_stop():
                if self._socket is not None:
                    with contextlib.suppress(OSError):  # already closed
                        self._socket.shutdown(socket.SHUT_RDWR)
                return

    def done(self) -> None:
        self._finished.set()
