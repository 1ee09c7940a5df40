"""One reply, token by token: sample, detokenize, split, and close the reasoning when asked.

Each step costs the same at position 10 and at position 16,000: one sampled token, one
token_to_piece, a few string operations on the newest text, one llama.cpp decode of one token.

Token counts: every sampled token is counted once, in the section (reasoning or answer) the
splitter puts it in, and travels on the deltas (`TextDelta.tokens`), so the deltas of each kind add
up to `GenerationStats.reasoning_tokens` / `answer_tokens` exactly. The reasoning closer that the
thinking budget or "answer now" forces in ("\n</think>\n\n") is not sampled and counts in neither:
the two counts are the model's own output, the quantities `max_tokens` and the thinking budget
limit. (Its few tokens do sit in the KV cache; `LlamaEngine.n_past` includes them.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fathom_desktop.engine import llama_backend as backend
from fathom_desktop.engine.errors import DecodeError
from fathom_desktop.engine.native import llama_cpp
from fathom_desktop.engine.reasoning import ReasoningSplitter
from fathom_desktop.engine.types import (
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    GenerationStats,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
)


@dataclass(frozen=True)
class ReplySetup:
    """What a reply needs from the loaded model."""

    llama: llama_cpp.Llama
    vocab: llama_cpp.llama_vocab_p
    n_ctx: int
    # The tokens of "\n</think>\n\n", fed when the thinking budget runs out or on "answer now".
    closer_tokens: tuple[int, ...]
    render_special: bool
    stop_at_end_of_generation: bool


@dataclass
class _Texts:
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    # Sums of the deltas' token counts, so the stats equal what the stream reported.
    reasoning_tokens: int = 0
    answer_tokens: int = 0


class Reply:
    """Decodes one reply after the prompt has been evaluated; iterate `events()` once."""

    def __init__(
        self,
        setup: ReplySetup,
        sampler: backend.Sampler,
        sampling: SamplingParams,
        control: GenerationControl,
        *,
        starts_in_reasoning: bool,
    ) -> None:
        self._setup = setup
        self._sampler = sampler
        self._sampling = sampling
        self._control = control
        self._splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
        self._detokenizer = backend.Detokenizer(setup.vocab, render_special=setup.render_special)
        self._texts = _Texts()
        self._announced: DeltaKind | None = None
        self.closed_early = False
        self.first_token_at: float | None = None

    def events(self) -> Iterator[StreamEvent]:
        """Text deltas and phase changes; returns the finish reason when the reply ends."""
        yield from self._announce()
        finish = yield from self._decode()
        yield from self._show(self._detokenizer.flush(), final=True)
        return finish

    def finished(
        self,
        finish: FinishReason,
        *,
        prompt_tokens: int,
        started: float,
        prompt_perf: backend.PerfCounters,
        dropped: int,
    ) -> Finished:
        perf = backend.read_perf(self._setup.llama)
        stats = GenerationStats(
            prompt_tokens=prompt_tokens,
            reasoning_tokens=self._texts.reasoning_tokens,
            answer_tokens=self._texts.answer_tokens,
            time_to_first_token_s=(self.first_token_at or time.perf_counter()) - started,
            # llama.cpp's own timers; decoding is what ran after the prompt was read.
            prompt_tokens_per_s=_rate(prompt_perf.prompt_tokens, prompt_perf.prompt_ms),
            decode_tokens_per_s=_rate(
                perf.decode_tokens - prompt_perf.decode_tokens,
                perf.decode_ms - prompt_perf.decode_ms,
            ),
            finish_reason=finish,
            dropped_messages=dropped,
            thinking_closed_early=self.closed_early,
        )
        return Finished("".join(self._texts.reasoning), "".join(self._texts.answer), stats)

    def _decode(self) -> Iterator[StreamEvent]:
        setup, sampling, control = self._setup, self._sampling, self._control
        llama = setup.llama
        sampled = 0
        while True:
            if control.cancel.is_set():
                return FinishReason.CANCELLED
            if sampling.max_tokens is not None and sampled >= sampling.max_tokens:
                return FinishReason.LENGTH
            if llama.n_tokens >= setup.n_ctx:
                return FinishReason.CONTEXT
            token = self._sampler.sample(llama.ctx)
            sampled += 1
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            if setup.stop_at_end_of_generation and backend.is_end_of_generation(setup.vocab, token):
                return FinishReason.STOP
            yield from self._show(self._detokenizer.push(token), tokens=1)
            batch = [token]
            if self._should_close_reasoning():
                # Close the reasoning in place: the KV cache keeps everything so far.
                self.closed_early = True
                batch += setup.closer_tokens
                for forced in setup.closer_tokens:
                    self._sampler.accept(forced)
                    yield from self._show(self._detokenizer.push(forced))
            try:
                llama.eval(batch)
            except RuntimeError as error:
                raise DecodeError(f"llama.cpp failed while generating ({error}).") from None

    def _should_close_reasoning(self) -> bool:
        if self.closed_early or self._splitter.phase is not DeltaKind.REASONING:
            return False
        budget = self._sampling.thinking_budget
        # The splitter's count includes tokens whose text it still holds back.
        asked = self._control.answer_now.is_set() or (
            budget is not None and self._splitter.tokens(DeltaKind.REASONING) >= budget
        )
        room = self._setup.llama.n_tokens + 1 + len(self._setup.closer_tokens) < self._setup.n_ctx
        return asked and room

    def _show(self, text: str, *, tokens: int = 0, final: bool = False) -> Iterator[StreamEvent]:
        deltas = self._splitter.feed(text, tokens)
        if final:
            deltas += self._splitter.finish()
        for delta in deltas:
            if delta.kind is not self._announced:
                self._announced = delta.kind
                yield PhaseChanged(Phase(delta.kind.value))
            if delta.kind is DeltaKind.REASONING:
                self._texts.reasoning.append(delta.text)
                self._texts.reasoning_tokens += delta.tokens
            else:
                self._texts.answer.append(delta.text)
                self._texts.answer_tokens += delta.tokens
            yield delta
        yield from self._announce()

    def _announce(self) -> Iterator[StreamEvent]:
        # A phase is announced as soon as the splitter knows it, before its first visible text.
        phase = self._splitter.phase
        if phase is not None and phase is not self._announced:
            self._announced = phase
            yield PhaseChanged(Phase(phase.value))


def _rate(count: int, milliseconds: float) -> float:
    return count / milliseconds * 1000.0 if milliseconds > 0 else 0.0
