"""The engine client: one long-lived QThread that owns the engine and serves one request at a time.

The GUI never calls the engine. `ChatSession` posts requests to `EngineWorker` through queued
signals and gets results back through queued signals; Stop and Answer now are `threading.Event`s
on the request's GenerationControl, which the session sets directly and the engine checks between
tokens. Text is forwarded in batches (every `BATCH_INTERVAL_S`) so the GUI handles ~25 updates a
second however fast the model runs. The engine itself is made in one place, `EngineWorker.load`,
from the factory the client was given.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from fathom_desktop.engine.answers import extract_boxed
from fathom_desktop.engine.consensus import ConsensusResult
from fathom_desktop.engine.errors import EngineCrashedError, EngineError
from fathom_desktop.engine.types import (
    ChatEngine,
    ChatMessage,
    ContextTrimmed,
    DeltaKind,
    Finished,
    GenerationControl,
    LoadOptions,
    Phase,
    PhaseChanged,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from fathom_desktop.history.samples import SampleRecord

log = logging.getLogger(__name__)

BATCH_INTERVAL_S = 0.04
# How often the partial reply is handed to GenerationRequest.save_partial: a killed app loses less.
PARTIAL_SAVE_INTERVAL_S = 0.5

EngineFactory = Callable[[], ChatEngine]


@dataclass(frozen=True)
class GenerationRequest:
    request_id: int
    messages: list[ChatMessage]
    sampling: SamplingParams
    control: GenerationControl
    # > 1 asks for self-consistency: that many samples and a vote on their boxed answers.
    samples: int = 1
    # Called in the model thread with (reasoning, answer) so far, every PARTIAL_SAVE_INTERVAL_S:
    # the history's fsync then never stalls the GUI.
    save_partial: Callable[[str, str], None] | None = None
    # A consensus request's partial save instead: every sample so far, in sampling order.
    save_samples: Callable[[tuple[SampleRecord, ...]], None] | None = None
    # A consensus request's cap on samples decoded at once (None: as many as the engine fits).
    parallel: int | None = None


@dataclass(frozen=True)
class StreamBatch:
    """New text since the previous batch, with the reply's running token counts (the sums of
    the engine's `TextDelta.tokens`, so they are the engine's own counts)."""

    request_id: int
    reasoning: str
    answer: str
    reasoning_tokens: int
    answer_tokens: int


@dataclass(frozen=True)
class StreamNotice:
    """A phase change or a trimmed context, delivered in order with the batches."""

    request_id: int
    event: PhaseChanged | ContextTrimmed
    sample_index: int = 0


@dataclass(frozen=True)
class SampleProgress:
    """One consensus sample's news since the previous batch: its new text, its running token
    counts (the engine's own), where it is, and how it ended once it has."""

    index: int
    reasoning: str
    answer: str
    reasoning_tokens: int
    answer_tokens: int
    phase: Phase
    finished: SampleRecord | None = None


@dataclass(frozen=True)
class ConsensusProgress:
    """Every consensus sample that changed since the previous batch (one signal for all)."""

    request_id: int
    samples: tuple[SampleProgress, ...]


@dataclass(frozen=True)
class GenerationDone:
    request_id: int
    finished: Finished
    # Set for a consensus request: the vote over the samples.
    consensus: ConsensusResult | None = None


@dataclass(frozen=True)
class GenerationFailed:
    request_id: int
    message: str
    # What the failed sample had written, exactly as it was streamed, and its token counts.
    reasoning: str = ""
    answer: str = ""
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    # Set when the engine's process died: the model is gone and must be loaded again.
    crash: EngineCrashedError | None = None


@dataclass(frozen=True)
class LoadFailed:
    message: str
    crash: EngineCrashedError | None = None


@dataclass
class _Batcher:
    request_id: int
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    last_flush: float = field(default_factory=time.monotonic)
    last_save: float = field(default_factory=time.monotonic)
    # Everything so far, so that a failure can still hand back the partial text.
    all_reasoning: list[str] = field(default_factory=list)
    all_answer: list[str] = field(default_factory=list)

    def add(self, delta: TextDelta) -> None:
        if delta.kind is DeltaKind.REASONING:
            self.reasoning.append(delta.text)
            self.all_reasoning.append(delta.text)
            self.reasoning_tokens += delta.tokens
        else:
            self.answer.append(delta.text)
            self.all_answer.append(delta.text)
            self.answer_tokens += delta.tokens

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= BATCH_INTERVAL_S

    def take(self) -> StreamBatch | None:
        self.last_flush = time.monotonic()
        if not self.reasoning and not self.answer:
            return None
        batch = StreamBatch(
            self.request_id,
            "".join(self.reasoning),
            "".join(self.answer),
            self.reasoning_tokens,
            self.answer_tokens,
        )
        self.reasoning.clear()
        self.answer.clear()
        return batch


@dataclass
class _Lane:
    """One consensus sample as the worker follows it."""

    index: int
    phase: Phase = Phase.PROMPT
    reasoning: list[str] = field(default_factory=list)  # new since the last batch
    answer: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    all_reasoning: list[str] = field(default_factory=list)
    all_answer: list[str] = field(default_factory=list)
    finished: SampleRecord | None = None
    changed: bool = True

    def take(self) -> SampleProgress:
        progress = SampleProgress(
            self.index,
            "".join(self.reasoning),
            "".join(self.answer),
            self.reasoning_tokens,
            self.answer_tokens,
            self.phase,
            self.finished,
        )
        self.reasoning.clear()
        self.answer.clear()
        self.changed = False
        return progress

    def record(self) -> SampleRecord:
        if self.finished is not None:
            return self.finished
        answer = "".join(self.all_answer)
        return SampleRecord(
            index=self.index,
            reasoning="".join(self.all_reasoning),
            answer=answer,
            boxed=extract_boxed(answer),
            reasoning_tokens=self.reasoning_tokens,
            answer_tokens=self.answer_tokens,
        )


class _Lanes:
    """The consensus samples seen so far, flushed together every BATCH_INTERVAL_S."""

    def __init__(self) -> None:
        self.lanes: dict[int, _Lane] = {}
        self.last_flush = time.monotonic()
        self.last_save = time.monotonic()
        self.announced: set[Phase] = set()
        self.trimmed = False

    def lane(self, index: int) -> _Lane:
        lane = self.lanes.get(index)
        if lane is None:
            lane = self.lanes[index] = _Lane(index)
        return lane

    def take(self) -> tuple[SampleProgress, ...]:
        self.last_flush = time.monotonic()
        return tuple(lane.take() for _, lane in sorted(self.lanes.items()) if lane.changed)

    def records(self) -> tuple[SampleRecord, ...]:
        return tuple(lane.record() for _, lane in sorted(self.lanes.items()))


class EngineWorker(QObject):
    """Lives in the model thread. Slots run there; signals are delivered to the GUI queued."""

    load_finished = Signal(object)  # LoadReport
    load_failed = Signal(object)  # LoadFailed
    batch = Signal(object)  # StreamBatch
    consensus_batch = Signal(object)  # ConsensusProgress
    notice = Signal(object)  # StreamNotice
    generation_done = Signal(object)  # GenerationDone
    generation_failed = Signal(object)  # GenerationFailed
    shut_down = Signal()

    def __init__(self, engine_factory: EngineFactory) -> None:
        super().__init__()
        self._engine_factory = engine_factory
        self._engine: ChatEngine | None = None

    @Slot(object)
    def load(self, options: LoadOptions) -> None:
        try:
            if self._engine is None:
                # The one place the engine is made: in-process today, or a client of the
                # engine's own process.
                self._engine = self._engine_factory()
            elif self._engine.loaded is not None:
                self._engine.close()
            report = self._engine.load(options)
        except EngineCrashedError as error:
            self.load_failed.emit(LoadFailed(str(error), error))
        except EngineError as error:
            self.load_failed.emit(LoadFailed(str(error)))
        except Exception as error:  # a crash in the binding must not take the app down
            log.exception("loading %s failed", options.model_path)
            self.load_failed.emit(LoadFailed(f"Could not load {options.model_path.name}: {error}"))
        else:
            self.load_finished.emit(report)

    @Slot(object)
    def generate(self, request: GenerationRequest) -> None:
        batcher = _Batcher(request.request_id)
        try:
            if self._engine is None or self._engine.loaded is None:
                raise EngineError("No model is loaded yet.")
            if request.samples > 1:
                self._consensus(request, batcher)
                return
            for event in self._engine.generate(request.messages, request.sampling, request.control):
                self._forward(request.request_id, event, batcher)
                self._save_partial(request, batcher)
        except EngineCrashedError as error:
            self._fail(request.request_id, str(error), batcher, error)
        except EngineError as error:
            self._fail(request.request_id, str(error), batcher)
        except Exception as error:
            log.exception("generation failed")
            self._fail(request.request_id, f"Generation failed: {error}", batcher)

    def _forward(self, request_id: int, event: StreamEvent, batcher: _Batcher) -> None:
        if isinstance(event, TextDelta):
            batcher.add(event)
            if batcher.due():
                self._flush(batcher)
            return
        # Text before a phase change or the end must reach the GUI before it.
        self._flush(batcher)
        if isinstance(event, Finished):
            self.generation_done.emit(GenerationDone(request_id, event))
        else:
            self.notice.emit(StreamNotice(request_id, event))

    def _consensus(self, request: GenerationRequest, batcher: _Batcher) -> None:
        """Every sample gets a lane; all lanes that changed go to the GUI in one batch every
        BATCH_INTERVAL_S, whether the engine interleaves the samples or runs them in turn."""
        lanes = _Lanes()

        def on_event(index: int, event: StreamEvent) -> None:
            lane = lanes.lane(index)
            lane.changed = True
            if isinstance(event, TextDelta):
                parts = (lane.reasoning, lane.all_reasoning)
                if event.kind is DeltaKind.ANSWER:
                    parts = (lane.answer, lane.all_answer)
                    lane.answer_tokens += event.tokens
                else:
                    lane.reasoning_tokens += event.tokens
                for part in parts:
                    part.append(event.text)
            elif isinstance(event, Finished):
                lane.finished = SampleRecord.finished(index, event)
                lane.reasoning_tokens = event.stats.reasoning_tokens
                lane.answer_tokens = event.stats.answer_tokens
            elif isinstance(event, PhaseChanged):
                lane.phase = event.phase
                # The session hears each phase once (the prompt's size, then that reasoning
                # began); the lanes carry every sample's own phase.
                if event.phase not in lanes.announced:
                    lanes.announced.add(event.phase)
                    self._flush_lanes(request, lanes)
                    self.notice.emit(StreamNotice(request.request_id, event, index))
            elif isinstance(event, ContextTrimmed) and not lanes.trimmed:
                lanes.trimmed = True
                self.notice.emit(StreamNotice(request.request_id, event, index))
            if isinstance(event, Finished) or time.monotonic() - lanes.last_flush >= (
                BATCH_INTERVAL_S
            ):
                self._flush_lanes(request, lanes)
            self._save_samples(request, lanes)

        assert self._engine is not None
        try:
            result = self._engine.consensus(
                request.messages,
                request.sampling,
                request.samples,
                request.control,
                on_event=on_event,
                parallel=request.parallel,
            )
        finally:
            self._flush_lanes(request, lanes)
        if not result.samples:
            raise EngineError("No sample finished, so there is nothing to vote on.")
        winner = result.winner
        self.generation_done.emit(GenerationDone(request.request_id, winner, result))

    def _flush_lanes(self, request: GenerationRequest, lanes: _Lanes) -> None:
        progress = lanes.take()
        if progress:
            self.consensus_batch.emit(ConsensusProgress(request.request_id, progress))

    def _save_samples(self, request: GenerationRequest, lanes: _Lanes) -> None:
        if request.save_samples is None:
            return
        now = time.monotonic()
        if now - lanes.last_save < PARTIAL_SAVE_INTERVAL_S:
            return
        lanes.last_save = now
        try:
            request.save_samples(lanes.records())
        except Exception as error:  # a full disk must not end the reply; the final save retries
            log.warning("could not save the samples so far: %s", error)

    def _flush(self, batcher: _Batcher) -> None:
        batch = batcher.take()
        if batch is not None:
            self.batch.emit(batch)

    def _save_partial(self, request: GenerationRequest, batcher: _Batcher) -> None:
        if request.save_partial is None:
            return
        now = time.monotonic()
        if now - batcher.last_save < PARTIAL_SAVE_INTERVAL_S:
            return
        batcher.last_save = now
        try:
            request.save_partial("".join(batcher.all_reasoning), "".join(batcher.all_answer))
        except Exception as error:  # a full disk must not end the reply; the final save retries
            log.warning("could not save the partial reply: %s", error)

    def _fail(
        self,
        request_id: int,
        message: str,
        batcher: _Batcher,
        crash: EngineCrashedError | None = None,
    ) -> None:
        self._flush(batcher)
        self.generation_failed.emit(
            GenerationFailed(
                request_id,
                message,
                "".join(batcher.all_reasoning),
                "".join(batcher.all_answer),
                batcher.reasoning_tokens,
                batcher.answer_tokens,
                crash,
            )
        )

    @Slot()
    def shutdown(self) -> None:
        if self._engine is not None:
            try:
                self._engine.close()
            except Exception:
                log.exception("closing the engine failed")
        self.shut_down.emit()
        QThread.currentThread().quit()


class EngineClient(QObject):
    """The session's handle on the model thread: starts it, posts requests, and shuts it down.

    It keeps no state of the conversation: `ChatSession` decides what may run when. `current` is
    the generation in flight (its control is how Stop and Answer now reach the engine).
    """

    # Requests to the worker. Queued: the slot must run in the model thread, not the caller's.
    _request_load = Signal(object)
    _request_generation = Signal(object)
    _request_shutdown = Signal()

    def __init__(self, engine_factory: EngineFactory, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._ids = itertools.count(1)
        self.closed = False
        self.current: GenerationRequest | None = None
        self.thread = QThread()
        self.thread.setObjectName("fathom-model")
        self.worker = EngineWorker(engine_factory)
        self.worker.moveToThread(self.thread)
        queued = Qt.ConnectionType.QueuedConnection
        self._request_load.connect(self.worker.load, queued)
        self._request_generation.connect(self.worker.generate, queued)
        self._request_shutdown.connect(self.worker.shutdown, queued)
        # Back to the GUI thread (queued), before the session hears of the same result.
        self.worker.generation_done.connect(self._on_generation_done, queued)
        self.worker.generation_failed.connect(self._on_generation_done, queued)
        self.thread.start()

    def load(self, options: LoadOptions) -> None:
        if self.closed:
            return
        self.cancel()
        self._request_load.emit(options)

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        samples: int = 1,
        save_partial: Callable[[str, str], None] | None = None,
        *,
        save_samples: Callable[[tuple[SampleRecord, ...]], None] | None = None,
        parallel: int | None = None,
    ) -> GenerationRequest:
        if self.closed:
            raise RuntimeError("the engine client is closed")
        if self.current is not None:
            raise RuntimeError("a generation is already running")
        request = GenerationRequest(
            next(self._ids),
            messages,
            sampling,
            GenerationControl(),
            samples,
            save_partial,
            save_samples,
            parallel,
        )
        self.current = request
        self._request_generation.emit(request)
        return request

    def cancel(self) -> None:
        if self.current is not None:
            self.current.control.cancel.set()

    def answer_now(self) -> None:
        if self.current is not None:
            self.current.control.answer_now.set()

    def _on_generation_done(self, result: GenerationDone | GenerationFailed) -> None:
        if self.current is not None and result.request_id == self.current.request_id:
            self.current = None

    def close(self, timeout_ms: int = 30_000) -> bool:
        """Stop any generation, close the engine in its thread and join the thread."""
        if self.closed:
            return True
        self.cancel()
        self.closed = True
        self._request_shutdown.emit()
        finished = self.thread.wait(timeout_ms)
        if not finished:
            log.warning("the model thread did not stop within %d ms", timeout_ms)
        return finished
