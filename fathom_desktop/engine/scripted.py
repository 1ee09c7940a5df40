"""A scripted stand-in for the real engine that honours `ChatEngine` without a model.

It streams a scripted reasoning and answer at a chosen token rate, obeys Stop and Answer now
between tokens, applies the thinking budget and max_tokens, continues a partial reply where it
ended, and rejects files that are not GGUF the way the real engine does. It can also die the way
an engine process does (`Crash`). The tests, `bench/ui_stream.py` and `fathom-desktop
--fake-engine` (demos and screenshots) use it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fathom_desktop.engine.consensus import (
    ConsensusResult,
    check_sample_count,
    consensus,
    majority_vote,
)
from fathom_desktop.engine.errors import EngineCrashedError, ModelFileError, ModelNotLoadedError
from fathom_desktop.engine.prompt import split_continuation
from fathom_desktop.engine.types import (
    FATHOM_N_CTX,
    ChatMessage,
    DeltaKind,
    Finished,
    FinishReason,
    GenerationControl,
    GenerationStats,
    LoadOptions,
    LoadReport,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
    TextDelta,
)

# Samples a consensus decodes at once when the caller sets no cap (the real engine asks its
# memory planner; the fake has no memory to plan).
FAKE_PARALLEL = 4
# The path `--fake-engine` loads when no model is given; it is never opened.
DEMO_MODEL_PATH = Path("fathom-r1-14b-demo.Q4_K_M.gguf")
GGUF_MAGIC = b"GGUF"
FATHOM_LAYERS = 48

# One "token" per word with its leading space, or per run of spaces/newlines.
_TOKEN = re.compile(r"\s*\S+|\s+")
_QUANT = re.compile(r"(IQ\d_\w+|Q\d_K_[SML]|Q\d_K|Q\d_\d|F16|BF16|F32)", re.IGNORECASE)

DEMO_REASONING = (
    "Okay, so I need to find the sum of the first 50 positive odd numbers.\n\n"
    "The odd numbers are 1, 3, 5, and so on; the n-th one is 2n - 1. "
    "A known identity says the sum of the first n odd numbers is n^2. "
    "Let me check it on small cases: 1 = 1, 1 + 3 = 4, 1 + 3 + 5 = 9. That works.\n\n"
    "So for n = 50 the sum is 50^2 = 2500. Let me double-check with the arithmetic series "
    "formula: n/2 times (first + last) = 25 * (1 + 99) = 2500. Both agree.\n"
)
DEMO_ANSWER = (
    "The first $n$ odd numbers add up to a perfect square:\n\n"
    "$$1 + 3 + \\dots + (2n-1) = \\sum_{k=1}^{n} (2k-1) = n^2.$$\n\n"
    "- Check: $1 + 3 + 5 = 9 = 3^2$.\n"
    "- As an arithmetic series: \\(\\frac{n}{2}(1 + (2n-1)) = n^2\\).\n\n"
    "For $n = 50$ the sum is $50^2$, so the answer is \\boxed{2500}."
)


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class FakeScript:
    """What the fake model "says"; answers may hold Markdown and LaTeX."""

    reasoning: str = DEMO_REASONING
    answer: str = DEMO_ANSWER


@dataclass(frozen=True)
class Crash:
    """The engine's process dies: while loading, or after `after_tokens` tokens of a reply."""

    after_tokens: int = 0
    while_loading: bool = False
    gpu_memory: bool = False
    signal_name: str = "SIGABRT"
    last_error: str = "CUDA error: out of memory"

    def error(self) -> EngineCrashedError:
        return EngineCrashedError(
            f"The model's process ended with {self.signal_name}: {self.last_error}",
            signal_name=self.signal_name,
            last_error=self.last_error,
            gpu_memory=self.gpu_memory,
            while_loading=self.while_loading,
        )


class FakeEngine:
    """Streams `script` at `tokens_per_s` (None: as fast as possible).

    A consensus decodes up to `parallel` samples side by side (FAKE_PARALLEL when not capped),
    one token of each per step at `tokens_per_s` steps a second, refilling a slot as a sample
    ends, as the batched engine does; sample i says `sample_scripts[i % len]` when given.

    Crashes queued with `crash_next` happen once each, in order: a loading crash on the next load,
    any other in the next reply. Like a dead engine process, a crashed engine has no model loaded.
    """

    def __init__(
        self,
        script: FakeScript | None = None,
        *,
        tokens_per_s: float | None = 200.0,
        load_delay_s: float = 0.0,
        prompt_delay_s: float = 0.0,
        sample_scripts: Sequence[FakeScript] = (),
    ) -> None:
        self.script = script or FakeScript()
        self.sample_scripts = tuple(sample_scripts)
        self.tokens_per_s = tokens_per_s
        self.load_delay_s = load_delay_s
        self.prompt_delay_s = prompt_delay_s
        self._loaded: LoadReport | None = None
        # What the tests inspect: every conversation the engine was asked to continue.
        self.requests: list[list[ChatMessage]] = []
        self.load_calls: list[LoadOptions] = []
        self.closed = False
        self._lock = threading.Lock()
        self._crashes: list[Crash] = []

    def crash_next(self, crash: Crash) -> None:
        with self._lock:
            self._crashes.append(crash)

    def _take_crash(self, *, while_loading: bool) -> Crash | None:
        with self._lock:
            if self._crashes and self._crashes[0].while_loading == while_loading:
                return self._crashes.pop(0)
        return None

    # -- ChatEngine ---------------------------------------------------------------------------

    def load(self, options: LoadOptions) -> LoadReport:
        self.load_calls.append(options)
        path = Path(options.model_path)
        if path != DEMO_MODEL_PATH:
            _check_gguf(path)
        if self.load_delay_s:
            time.sleep(self.load_delay_s)
        crash = self._take_crash(while_loading=True)
        if crash is not None:
            self._loaded = None
            raise crash.error()
        match = _QUANT.search(path.name)
        n_gpu = FATHOM_LAYERS + 1 if options.n_gpu_layers is None else options.n_gpu_layers
        self._loaded = LoadReport(
            model_path=path,
            n_ctx=options.n_ctx,
            n_gpu_layers=min(n_gpu, FATHOM_LAYERS + 1),
            n_layers=FATHOM_LAYERS + 1,
            flash_attn=bool(options.flash_attn),
            kv_cache_type=options.kv_cache_type,
            gpu_offload_supported=True,
            file_type=match.group(1).upper() if match else "Q4_K_M",
        )
        return self._loaded

    def close(self) -> None:
        self._loaded = None
        self.closed = True

    @property
    def loaded(self) -> LoadReport | None:
        return self._loaded

    def count_tokens(self, text: str) -> int:
        return len(split_tokens(text))

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        if self._loaded is None:
            raise ModelNotLoadedError("No model is loaded.")
        control = control or GenerationControl()
        with self._lock:
            self.requests.append(list(messages))
        return self._stream(messages, sampling, control, self._take_crash(while_loading=False))

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
        check_sample_count(k)
        if self._loaded is None:
            raise ModelNotLoadedError("No model is loaded.")
        n_parallel = min(k, parallel or FAKE_PARALLEL)
        if n_parallel <= 1:
            result = consensus(self, messages, sampling, k, control, on_event)
            return replace(result, parallel=1, parallel_reason="one after another (as asked)")
        finished = _SideBySide(self, messages, sampling, k, n_parallel, control, on_event).run()
        return replace(
            majority_vote(finished),
            parallel=n_parallel,
            parallel_reason=f"{n_parallel} at once (the scripted engine's default)"
            if parallel is None
            else f"{n_parallel} at once (as asked)",
        )

    def sample_script(self, index: int) -> FakeScript:
        if not self.sample_scripts:
            return self.script
        return self.sample_scripts[index % len(self.sample_scripts)]

    # -- the stream ----------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl,
        crash: Crash | None = None,
        *,
        script: FakeScript | None = None,
        paced: bool = True,
    ) -> Iterator[StreamEvent]:
        _, partial = split_continuation(messages)
        # The template's overhead (role markers, BOS) is about four tokens per message; a partial
        # reply's text is part of the prompt too.
        prompt_tokens = sum(
            self.count_tokens((m.reasoning or "") + m.content) + 4 for m in messages
        )
        n_ctx = self._loaded.n_ctx if self._loaded is not None else FATHOM_N_CTX
        started = time.monotonic()
        yield PhaseChanged(Phase.PROMPT, prompt_tokens)
        if self.prompt_delay_s:
            time.sleep(self.prompt_delay_s)
        first_token_at: float | None = None
        pacer = _Pacer(self.tokens_per_s if paced else None)
        text = {DeltaKind.REASONING: [], DeltaKind.ANSWER: []}
        counts = {DeltaKind.REASONING: 0, DeltaKind.ANSWER: 0}
        finish = FinishReason.STOP
        closed_early = False

        script = script or self.script
        reasoning, answer = script.reasoning, script.answer
        if partial is not None:
            # Go on from where the partial reply ended, as a model continuing its own text does.
            answer = _rest(answer, partial.content)
            reasoning = "" if partial.content else _rest(reasoning, partial.reasoning or "")
        phases = (
            (Phase.REASONING, DeltaKind.REASONING, split_tokens(reasoning)),
            (Phase.ANSWER, DeltaKind.ANSWER, split_tokens(answer)),
        )
        for phase, kind, tokens in phases:
            if finish is not FinishReason.STOP:
                break
            if not tokens and partial is not None:
                continue  # a continued reply announces only the phases it writes in
            yield PhaseChanged(phase, prompt_tokens)
            for token in tokens:
                if crash is not None and sum(counts.values()) >= crash.after_tokens:
                    self._loaded = None
                    raise crash.error()
                if control.cancel.is_set():
                    finish = FinishReason.CANCELLED
                    break
                if kind is DeltaKind.REASONING and self._should_close_thinking(
                    control, sampling, counts[kind]
                ):
                    closed_early = True
                    break
                generated = sum(counts.values())
                if sampling.max_tokens is not None and generated >= sampling.max_tokens:
                    finish = FinishReason.LENGTH
                    break
                if prompt_tokens + generated >= n_ctx:
                    finish = FinishReason.CONTEXT
                    break
                pacer.wait()
                first_token_at = first_token_at or time.monotonic()
                text[kind].append(token)
                counts[kind] += 1
                yield TextDelta(kind, token, tokens=1)

        elapsed = max(time.monotonic() - (first_token_at or started), 1e-6)
        generated = sum(counts.values())
        yield Finished(
            reasoning="".join(text[DeltaKind.REASONING]),
            answer="".join(text[DeltaKind.ANSWER]),
            stats=GenerationStats(
                prompt_tokens=prompt_tokens,
                reasoning_tokens=counts[DeltaKind.REASONING],
                answer_tokens=counts[DeltaKind.ANSWER],
                time_to_first_token_s=(first_token_at or time.monotonic()) - started,
                prompt_tokens_per_s=prompt_tokens / max(self.prompt_delay_s, 1e-3),
                decode_tokens_per_s=generated / elapsed,
                finish_reason=finish,
                thinking_closed_early=closed_early,
            ),
        )

    @staticmethod
    def _should_close_thinking(
        control: GenerationControl, sampling: SamplingParams, reasoning_tokens: int
    ) -> bool:
        if control.answer_now.is_set():
            return True
        budget = sampling.thinking_budget
        return budget is not None and reasoning_tokens >= budget


class _SideBySide:
    """A consensus of `k` samples, `n_parallel` at a time, one token of each per paced step."""

    def __init__(
        self,
        engine: FakeEngine,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        n_parallel: int,
        control: GenerationControl | None,
        on_event: Callable[[int, StreamEvent], None] | None,
    ) -> None:
        self._engine = engine
        self._messages = messages
        self._sampling = sampling
        self._k = k
        self._n_parallel = n_parallel
        self._control = control or GenerationControl()
        self._emit = on_event or (lambda index, event: None)
        self._next = 0
        self._done: dict[int, Finished] = {}

    def run(self) -> list[Finished]:
        live = [s for s in (self._start() for _ in range(self._n_parallel)) if s is not None]
        pacer = _Pacer(self._engine.tokens_per_s)
        while live:
            pacer.wait()
            # "Answer now" is for the samples live when it was pressed, as in the engine.
            pressed = self._control.answer_now.is_set()
            still = []
            for index, stream in live:
                if self._advance(index, stream):
                    still.append((index, stream))
                    continue
                successor = self._start()
                if successor is not None:
                    still.append(successor)
            if pressed:
                self._control.answer_now.clear()
            live = still
        return [self._done[index] for index in sorted(self._done)]

    def _start(self) -> tuple[int, Iterator[StreamEvent]] | None:
        if self._next >= self._k or self._control.cancel.is_set():
            return None
        index = self._next
        self._next += 1
        engine = self._engine
        with engine._lock:
            engine.requests.append(list(self._messages))
        seed = None if self._sampling.seed is None else self._sampling.seed + index
        stream = engine._stream(
            self._messages,
            replace(self._sampling, seed=seed),
            self._control,
            engine._take_crash(while_loading=False) if index == 0 else None,
            script=engine.sample_script(index),
            paced=False,
        )
        return index, stream

    def _advance(self, index: int, stream: Iterator[StreamEvent]) -> bool:
        """This sample's events up to its next token; False once it has finished."""
        for event in stream:
            self._emit(index, event)
            if isinstance(event, Finished):
                self._done[index] = event
                return False
            if isinstance(event, TextDelta):
                return True
        return False


class _Pacer:
    """Spaces tokens at a fixed rate against a deadline, so sleep overshoot does not accumulate."""

    def __init__(self, tokens_per_s: float | None) -> None:
        self._interval = 1.0 / tokens_per_s if tokens_per_s else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self._interval:
            return
        self._next += self._interval
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _rest(script: str, written: str) -> str:
    """What is left of `script` after `written`, or all of it when `written` is not its start."""
    return script[len(written) :] if script.startswith(written) else script


def _check_gguf(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"The model file {path} does not exist.")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a GGUF model file.")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        raise ModelFileError(f"The model file {path} cannot be read ({error.strerror}).") from error
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path.name} is not a GGUF model file.")
