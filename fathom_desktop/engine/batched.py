"""Self-consistency samples decoded side by side: one llama.cpp batch step advances every sample.

A decode step is bound by reading the weights, so one step over P sequences costs little more than
one step over a single sequence. llama-cpp-python's `Llama` drives one sequence, so the samples
get a context of their own, made from the same loaded model (the weights are shared, not loaded
twice) with room for P sequences, each in a KV cache stream of its own:

- the prompt is evaluated once (all but its last token) into sequence 0, and copied into the
  other sequences' streams (`seq_cp`);
- each sample runs in its own sequence, whose first batch entry is the prompt's last token;
- every step puts each live sample's newest token(s) in one `llama_batch` and samples each one
  at its own batch index, with its own sampler chain and seed (seed + sample index, as the
  sequential path seeds them);
- a finished sample's reply is dropped from its sequence, which keeps the prompt, and the next
  sample starts there (continuous refill).

Why a stream per sequence rather than one unified cache holding the prompt once: in a unified
cache every token's attention runs over the cells of all sequences (the others masked out), so a
step's attention work grows with P times the total length rather than with each sample's own:
at Fathom's reasoning lengths (thousands of tokens per sample) that outgrows the weights' reads
the batching saves. The price is the prompt's cells once per sequence, small beside the replies.
llama.cpp computes one micro-batch over consecutive streams only, so the batch lists the samples
by sequence and, once nothing is left to start, a sample in the highest sequence moves into the
gap a finished one leaves (one stream copy) rather than splitting every later step in two.

Each sample has its own reasoning split, thinking budget, "answer now" and stop; its events reach
`on_event(sample_index, event)` in the same shape a single reply streams them: by default sample
after sample (SampleOrder), as the sequential path delivers them, or interleaved as decoded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from fathom_desktop.engine import llama_backend as backend
from fathom_desktop.engine.consensus import EventSink, SampleOrder
from fathom_desktop.engine.errors import DecodeError, EngineError
from fathom_desktop.engine.generation import ReplySetup
from fathom_desktop.engine.native import llama_cpp
from fathom_desktop.engine.reasoning import ReasoningSplitter
from fathom_desktop.engine.types import (
    ContextTrimmed,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    GenerationStats,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
    TextDelta,
)

PROMPT_SEQUENCE = 0  # the prompt is evaluated here, then copied to the other sequences
N_BATCH = 512

# The settings a sample context takes over from the loaded model's own context, so that both
# compute alike (threads, attention kernel, KV cache type, offload, RoPE).
_INHERITED_PARAMS = (
    "n_threads",
    "n_threads_batch",
    "rope_scaling_type",
    "flash_attn_type",
    "rope_freq_base",
    "rope_freq_scale",
    "yarn_ext_factor",
    "yarn_attn_factor",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_orig_ctx",
    "type_k",
    "type_v",
    "offload_kqv",
    "op_offload",
    "swa_full",
)


@dataclass(frozen=True)
class Prompt:
    """A rendered, fitted prompt as the engine tokenized it."""

    tokens: tuple[int, ...]
    starts_in_reasoning: bool
    dropped_messages: int = 0


def sequence_cells(prompt_tokens: int, n_ctx: int, sampling: SamplingParams, closer: int) -> int:
    """KV cells one sample can fill beyond the shared prompt (its reply and the closer)."""
    room = n_ctx - max(0, prompt_tokens - 1)
    if sampling.max_tokens is not None:
        room = min(room, sampling.max_tokens + closer + 1)
    return max(1, room)


class SampleContext:
    """A llama.cpp context over an already loaded model, for `n_parallel` samples; close() it.

    Each sample's sequence gets a KV stream of `sequence_cells` cells (prompt and reply).
    """

    def __init__(self, llama: llama_cpp.Llama, *, n_parallel: int, sequence_cells: int) -> None:
        params = llama_cpp.llama_context_default_params()
        for name in _INHERITED_PARAMS:
            setattr(params, name, getattr(llama.context_params, name))
        # llama.cpp splits n_ctx evenly between the streams.
        params.n_ctx = n_parallel * sequence_cells
        params.n_batch = N_BATCH
        params.n_ubatch = N_BATCH
        params.n_seq_max = n_parallel
        params.kv_unified = False  # a stream per sequence: see the module docstring
        params.embeddings = False
        params.no_perf = False
        mark = backend.LOG.mark()
        self.ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if not self.ctx:
            errors = backend.LOG.since(mark)
            reason = errors[0] if errors else "llama.cpp refused the context"
            raise EngineError(
                f"Could not make room for {n_parallel} samples at once ({reason}); "
                "lower the parallel samples or the context size."
            )
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)

    def clear(self) -> None:
        self.batch.n_tokens = 0

    def add(self, token: int, position: int, sequence: int, *, logits: bool) -> int:
        """Append one token to the batch; returns its index there."""
        index = self.batch.n_tokens
        self.batch.token[index] = token
        self.batch.pos[index] = position
        self.batch.n_seq_id[index] = 1
        self.batch.seq_id[index][0] = sequence
        self.batch.logits[index] = 1 if logits else 0
        self.batch.n_tokens = index + 1
        return index

    def decode(self, what: str) -> None:
        status = llama_cpp.llama_decode(self.ctx, self.batch)
        if status != 0:
            raise DecodeError(f"llama.cpp failed while {what} (llama_decode returned {status}).")

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None


@dataclass
class _Sample:
    """One sample's state between batch steps."""

    index: int
    sequence: int
    sampler: backend.Sampler
    splitter: ReasoningSplitter
    detokenizer: backend.Detokenizer
    started: float
    position: int  # where the next fed token goes
    feed: list[int]  # tokens to put in the next batch (the newest token, maybe the closer)
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    sampled: int = 0
    closed_early: bool = False
    first_token_at: float | None = None
    announced: DeltaKind | None = None
    # Tokens decoded but not yet carried by a delta of their kind (text is held back).
    unreported: dict[DeltaKind, int] = field(
        default_factory=lambda: {DeltaKind.REASONING: 0, DeltaKind.ANSWER: 0}
    )
    batch_index: int = -1


class BatchedConsensus:
    """Runs `k` samples of one prompt, up to `n_parallel` at a time; call `run()` once."""

    def __init__(
        self,
        setup: ReplySetup,
        prompt: Prompt,
        sampling: SamplingParams,
        *,
        k: int,
        n_parallel: int,
        control: GenerationControl,
        on_event: EventSink | None = None,
        in_sample_order: bool = True,
    ) -> None:
        if k < 1 or n_parallel < 1:
            raise ValueError("batched consensus needs at least one sample and one sequence")
        if not prompt.tokens:
            raise ValueError("the prompt has no tokens")
        self._setup = setup
        self._prompt = prompt
        self._sampling = sampling
        self._k = k
        self._n_parallel = min(n_parallel, k)
        if self._n_parallel * (1 + len(setup.closer_tokens)) > N_BATCH:
            raise ValueError(f"{self._n_parallel} samples do not fit one {N_BATCH}-token batch")
        self._control = control
        sink = on_event or (lambda index, event: None)
        self._order = SampleOrder(sink) if in_sample_order else None
        self._on_event = self._order or sink
        self._next_index = 0
        self._done: list[tuple[int, Finished]] = []
        self._prompt_rate = 0.0
        reply = sequence_cells(len(prompt.tokens), setup.n_ctx, sampling, len(setup.closer_tokens))
        self._sequence_cells = len(prompt.tokens) + reply

    @property
    def n_parallel(self) -> int:
        return self._n_parallel

    def run(self) -> list[Finished]:
        """The finished samples in sample order (a cancel leaves out those never started)."""
        context = SampleContext(
            self._setup.llama, n_parallel=self._n_parallel, sequence_cells=self._sequence_cells
        )
        live: list[_Sample] = []
        try:
            self._evaluate_prompt(context)
            for sequence in range(self._n_parallel):
                if sequence != PROMPT_SEQUENCE and len(self._prompt.tokens) > 1:
                    # Between streams this copies the cells; llama.cpp does it before the next
                    # decode.
                    llama_cpp.llama_memory_seq_cp(context.memory, PROMPT_SEQUENCE, sequence, -1, -1)
                sample = self._start(context, sequence=sequence)
                if sample is not None:
                    live.append(sample)
            while live:
                live = self._step(context, live)
            if self._order is not None:
                self._order.flush()
        finally:
            for sample in live:
                sample.sampler.close()
            context.close()
        return [finished for _, finished in sorted(self._done, key=lambda item: item[0])]

    # -- the prompt and the samples' starts --------------------------------------------------

    def _evaluate_prompt(self, context: SampleContext) -> None:
        """All prompt tokens but the last into sequence 0; each sample decodes the last itself."""
        shared = self._prompt.tokens[:-1]
        began = time.perf_counter()
        for start in range(0, len(shared), N_BATCH):
            context.clear()
            for offset, token in enumerate(shared[start : start + N_BATCH]):
                context.add(token, start + offset, PROMPT_SEQUENCE, logits=False)
            context.decode("reading the prompt")
        llama_cpp.llama_synchronize(context.ctx)
        elapsed = time.perf_counter() - began
        self._prompt_rate = len(shared) / elapsed if elapsed > 0 and shared else 0.0

    def _start(self, context: SampleContext, *, sequence: int) -> _Sample | None:
        if self._next_index >= self._k or self._control.cancel.is_set():
            return None
        index = self._next_index
        self._next_index += 1
        shared = len(self._prompt.tokens) - 1
        # The sequence holds the prompt (and a finished sample's reply, dropped here).
        llama_cpp.llama_memory_seq_rm(context.memory, sequence, shared, -1)
        seed = None if self._sampling.seed is None else self._sampling.seed + index
        sampling = replace(self._sampling, seed=seed)
        setup = self._setup
        sample = _Sample(
            index=index,
            sequence=sequence,
            sampler=backend.Sampler(sampling, setup.llama.n_vocab()),
            splitter=ReasoningSplitter(starts_in_reasoning=self._prompt.starts_in_reasoning),
            detokenizer=backend.Detokenizer(setup.vocab, render_special=setup.render_special),
            started=time.perf_counter(),
            position=shared,
            feed=[self._prompt.tokens[-1]],
        )
        if self._prompt.dropped_messages:
            self._emit(sample, ContextTrimmed(dropped_messages=self._prompt.dropped_messages))
        self._emit(sample, PhaseChanged(Phase.PROMPT, prompt_tokens=len(self._prompt.tokens)))
        self._announce(sample)
        return sample

    # -- one batch step ----------------------------------------------------------------------

    def _step(self, context: SampleContext, live: list[_Sample]) -> list[_Sample]:
        context.clear()
        # In sequence order: llama.cpp puts consecutive sequences in one micro-batch.
        live.sort(key=lambda sample: sample.sequence)
        for sample in live:
            for offset, token in enumerate(sample.feed):
                last = offset == len(sample.feed) - 1
                index = context.add(token, sample.position + offset, sample.sequence, logits=last)
            sample.position += len(sample.feed)
            sample.batch_index = index
            sample.feed = []
        context.decode("generating")
        # "Answer now" is for the samples live when it was pressed (as in the sequential path,
        # where it applies to the current sample); samples that start later think in full.
        answer_now = self._control.answer_now.is_set()
        if answer_now:
            self._control.answer_now.clear()
        still: list[_Sample] = []
        for sample in live:
            finish = self._advance(context, sample, answer_now)
            if finish is None:
                still.append(sample)
                continue
            self._finish(sample, finish)
            successor = self._start(context, sequence=sample.sequence)
            if successor is not None:
                still.append(successor)
        if len(still) < len(live):
            self._close_gaps(context, still)
        return still

    def _close_gaps(self, context: SampleContext, live: list[_Sample]) -> None:
        """Moves samples from the highest sequences into freed lower ones, so that the live
        samples hold sequences 0..n-1: a gap would split every later step into several passes
        over the weights."""
        memory = context.memory
        for wanted in range(len(live)):
            if any(sample.sequence == wanted for sample in live):
                continue
            highest = max(live, key=lambda sample: sample.sequence)
            # Across streams seq_cp copies the stream; llama.cpp does it before the next decode.
            llama_cpp.llama_memory_seq_rm(memory, wanted, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, highest.sequence, wanted, -1, -1)
            llama_cpp.llama_memory_seq_rm(memory, highest.sequence, -1, -1)
            highest.sequence = wanted

    def _advance(
        self, context: SampleContext, sample: _Sample, answer_now: bool
    ) -> FinishReason | None:
        """Sample this sequence's next token; a finish reason when the sample ends instead."""
        setup, sampling = self._setup, self._sampling
        if self._control.cancel.is_set():
            return FinishReason.CANCELLED
        if sampling.max_tokens is not None and sample.sampled >= sampling.max_tokens:
            return FinishReason.LENGTH
        if sample.position >= setup.n_ctx:
            return FinishReason.CONTEXT
        token = sample.sampler.sample(context.ctx, sample.batch_index)
        sample.sampled += 1
        if sample.first_token_at is None:
            sample.first_token_at = time.perf_counter()
        if setup.stop_at_end_of_generation and backend.is_end_of_generation(setup.vocab, token):
            return FinishReason.STOP
        was_reasoning = sample.splitter.phase is DeltaKind.REASONING
        text = sample.detokenizer.push(token)
        counted = (
            DeltaKind.REASONING
            if was_reasoning or sample.splitter.phase is DeltaKind.REASONING
            else DeltaKind.ANSWER
        )
        # The splitter's phase may move while it reads this text; count with what it was.
        if counted is DeltaKind.REASONING:
            sample.reasoning_tokens += 1
        else:
            sample.answer_tokens += 1
        sample.unreported[counted] += 1
        self._show(sample, text)
        sample.feed = [token]
        if self._should_close_reasoning(sample, answer_now):
            # The closer goes into this sequence's KV cache: the reasoning so far is kept.
            sample.closed_early = True
            sample.feed += setup.closer_tokens
            for forced in setup.closer_tokens:
                sample.sampler.accept(forced)
                self._show(sample, sample.detokenizer.push(forced))
        return None

    def _should_close_reasoning(self, sample: _Sample, answer_now: bool) -> bool:
        if sample.closed_early or sample.splitter.phase is not DeltaKind.REASONING:
            return False
        budget = self._sampling.thinking_budget
        asked = answer_now or (budget is not None and sample.reasoning_tokens >= budget)
        # The same room test as a single reply: position after this token and the closer.
        room = sample.position + 1 + len(self._setup.closer_tokens) < self._setup.n_ctx
        return asked and room

    def _finish(self, sample: _Sample, finish: FinishReason) -> None:
        self._show(sample, sample.detokenizer.flush(), final=True)
        for kind in (DeltaKind.REASONING, DeltaKind.ANSWER):
            self._report_leftover(sample, kind)
        sample.sampler.close()
        now = time.perf_counter()
        decoded = sample.reasoning_tokens + sample.answer_tokens
        decoding_s = now - (sample.first_token_at or now)
        stats = GenerationStats(
            prompt_tokens=len(self._prompt.tokens),
            reasoning_tokens=sample.reasoning_tokens,
            answer_tokens=sample.answer_tokens,
            time_to_first_token_s=(sample.first_token_at or now) - sample.started,
            prompt_tokens_per_s=self._prompt_rate,
            decode_tokens_per_s=decoded / decoding_s if decoding_s > 0 else 0.0,
            finish_reason=finish,
            dropped_messages=self._prompt.dropped_messages,
            thinking_closed_early=sample.closed_early,
        )
        finished = Finished("".join(sample.reasoning), "".join(sample.answer), stats)
        self._done.append((sample.index, finished))
        self._emit(sample, finished)

    # -- events ------------------------------------------------------------------------------

    def _show(self, sample: _Sample, text: str, *, final: bool = False) -> None:
        deltas = sample.splitter.feed(text)
        if final:
            deltas += sample.splitter.finish()
        for delta in deltas:
            if delta.kind is DeltaKind.ANSWER:
                # Reasoning tokens whose text was a tag or trailing space still count.
                self._report_leftover(sample, DeltaKind.REASONING)
            if delta.kind is not sample.announced:
                sample.announced = delta.kind
                self._emit(sample, PhaseChanged(Phase(delta.kind.value)))
            (sample.reasoning if delta.kind is DeltaKind.REASONING else sample.answer).append(
                delta.text
            )
            tokens = sample.unreported[delta.kind]
            sample.unreported[delta.kind] = 0
            self._emit(sample, TextDelta(delta.kind, delta.text, tokens=tokens))
        self._announce(sample)

    def _report_leftover(self, sample: _Sample, kind: DeltaKind) -> None:
        """An empty delta carrying tokens whose text never showed (a tag, held-back space)."""
        tokens = sample.unreported[kind]
        if tokens:
            sample.unreported[kind] = 0
            self._emit(sample, TextDelta(kind, "", tokens=tokens))

    def _announce(self, sample: _Sample) -> None:
        phase = sample.splitter.phase
        if phase is not None and phase is not sample.announced:
            sample.announced = phase
            self._emit(sample, PhaseChanged(Phase(phase.value)))

    def _emit(self, sample: _Sample, event: StreamEvent) -> None:
        self._on_event(sample.index, event)
