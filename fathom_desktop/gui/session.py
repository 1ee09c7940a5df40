"""One chat session: the conversation shown, the reply being written, and the model that writes it.

`ChatSession` is widget-free. It owns the conversation id, the current turn and the one
`SessionState`; it is the only listener of the engine client (`EngineClient`, the model thread)
and tells the window what happened through typed signals. The window renders those and forwards
what the user does to the session's slots. Every reply is recorded in the history before it
streams, saved about twice a second while it does, and finished with a status whatever ends it,
an engine process that dies included.

Dependencies run one way: window → session → engine client → engine types.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, Signal

from fathom_desktop.engine.errors import EngineCrashedError
from fathom_desktop.engine.prompt import conversation_for_model
from fathom_desktop.engine.types import (
    ChatMessage,
    ContextTrimmed,
    FinishReason,
    LoadOptions,
    LoadReport,
    Phase,
    PhaseChanged,
)
from fathom_desktop.gui.session_types import (
    CONTINUABLE,
    ConversationShown,
    EngineFailure,
    LiveSample,
    ReplyEnded,
    ReplyStarted,
    ReplyText,
    SessionState,
    TokenUsage,
    Turn,
    fewer_gpu_layers,
    stats_record,
)
from fathom_desktop.gui.worker import (
    ConsensusProgress,
    EngineClient,
    EngineFactory,
    GenerationDone,
    GenerationFailed,
    LoadFailed,
    StreamBatch,
    StreamNotice,
)
from fathom_desktop.history import (
    ConversationSummary,
    History,
    HistoryError,
    MessageStatus,
    StoredMessage,
)
from fathom_desktop.history.samples import SampleRecord, VoteRecord
from fathom_desktop.settings import SettingsStore, SystemPreset

log = logging.getLogger(__name__)

TITLE_LENGTH = 60


class ChatSession(QObject):
    """The conversation, its current turn and the model, behind one state (see SessionState)."""

    state_changed = Signal(object)  # SessionState
    model_loaded = Signal(object)  # LoadReport
    load_failed = Signal(str)  # one line; the model could not be loaded
    engine_failed = Signal(object)  # EngineFailure
    problem = Signal(str)  # one line for the banner (history errors)
    status_message = Signal(str)  # a passing note for the status bar
    conversation_shown = Signal(object)  # ConversationShown
    conversations_changed = Signal()  # titles or order in the sidebar changed
    user_message_added = Signal(int, str)  # message id, text
    reply_started = Signal(object)  # ReplyStarted
    reply_text = Signal(object)  # ReplyText
    consensus_progress = Signal(object)  # ConsensusProgress: the samples that moved on
    reply_phase = Signal(object)  # Phase: the prompt is read, the reasoning or the answer starts
    context_trimmed = Signal(int)  # earlier messages left out of this turn's prompt
    usage_changed = Signal(object)  # TokenUsage
    reply_finished = Signal(object)  # ReplyEnded

    def __init__(
        self,
        engine_factory: EngineFactory,
        history: History,
        store: SettingsStore,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.history = history
        self.store = store
        self.state = SessionState.NO_MODEL
        self.conversation_id: int | None = None
        self.turn: Turn | None = None
        self.report: LoadReport | None = None
        self._good_report: LoadReport | None = None  # what the last good load reported
        # What was asked to load last, and the last options that loaded: a crash reloads the
        # first, a bad replacement model goes back to the second.
        self.loading: LoadOptions | None = None
        self.last_good_load: LoadOptions | None = None
        self._after_load: Callable[[], bool] | None = None
        self._closed = False
        self.client = EngineClient(engine_factory, self)
        worker = self.client.worker
        # Queued: emitted in the model thread; the session and what it tells the window live
        # in the GUI thread.
        queued = Qt.ConnectionType.QueuedConnection
        worker.load_finished.connect(self._on_loaded, queued)
        worker.load_failed.connect(self._on_load_failed, queued)
        worker.batch.connect(self._on_batch, queued)
        worker.consensus_batch.connect(self._on_consensus_batch, queued)
        worker.notice.connect(self._on_notice, queued)
        worker.generation_done.connect(self._on_done, queued)
        worker.generation_failed.connect(self._on_failed, queued)

    # -- state ----------------------------------------------------------------------------------

    def _enter(self, state: SessionState) -> None:
        if state is not self.state:
            self.state = state
            self.state_changed.emit(state)

    @property
    def closed(self) -> bool:
        return self._closed

    def n_ctx(self) -> int:
        """The loaded model's context window, or before one loads the one the settings ask for."""
        if self.report is not None:
            return self.report.n_ctx
        return int(self.store.get("n_ctx"))  # type: ignore[arg-type]

    # -- the model ------------------------------------------------------------------------------

    def load(self, options: LoadOptions) -> None:
        """Load `options` in the model thread; a running reply is stopped (and saved) first."""
        if self._closed:
            return
        if self.turn is not None:
            self.client.cancel()
        self.loading = options
        self._enter(SessionState.LOADING)
        self.client.load(options)

    def reload(self, *, fewer_gpu_layers: bool = False) -> bool:
        """Load the model again after the engine failed (with half its GPU layers if asked)."""
        options = self.loading or self.last_good_load
        if options is None or self.state.replying or self.state is SessionState.LOADING:
            return False
        if fewer_gpu_layers:
            layers = self._fewer_gpu_layers()
            if layers is not None:
                options = dataclasses.replace(options, n_gpu_layers=layers)
        self.load(options)
        return True

    def _fewer_gpu_layers(self) -> int | None:
        """Half the GPU layers of what failed: as loaded, or as asked when it never loaded."""
        if self._good_report is not None and self.loading == self.last_good_load:
            return fewer_gpu_layers(self._good_report.n_gpu_layers)
        if self.loading is not None:
            return fewer_gpu_layers(self.loading.n_gpu_layers)
        return None

    def _on_loaded(self, report: LoadReport) -> None:
        if self._closed:
            return
        self.report = self._good_report = report
        self.last_good_load = self.loading
        self._enter(SessionState.READY)
        self.model_loaded.emit(report)
        start, self._after_load = self._after_load, None
        if start is not None:
            start()

    def _on_load_failed(self, failed: LoadFailed) -> None:
        if self._closed:
            return
        self.report = None
        self._after_load = None
        if failed.crash is not None:
            self._engine_died(failed.crash, while_loading=True)
            return
        self._enter(SessionState.NO_MODEL)
        self.load_failed.emit(failed.message)

    def _engine_died(self, crash: EngineCrashedError, *, while_loading: bool) -> None:
        self.report = None  # the model went with the process
        self._enter(SessionState.ENGINE_FAILED)
        fewer = self._fewer_gpu_layers() if crash.gpu_memory else None
        self.engine_failed.emit(EngineFailure(str(crash), while_loading, fewer))

    # -- conversations ----------------------------------------------------------------------------

    def list_conversations(self, search: str | None = None) -> list[ConversationSummary]:
        try:
            return self.history.list_conversations(search or None)
        except HistoryError as error:
            self.problem.emit(str(error))
            return []

    def new_conversation(self) -> bool:
        if self.state.replying:
            return False
        self.conversation_id = None
        self.conversation_shown.emit(ConversationShown(None, ""))
        return True

    def open_conversation(self, conversation_id: int) -> bool:
        if self.state.replying and conversation_id != self.conversation_id:
            self.status_message.emit("Stop the reply first to switch conversations.")
            return False
        try:
            summary = self.history.conversation(conversation_id)
            stored = self.history.messages(conversation_id)
        except HistoryError as error:
            self.problem.emit(str(error))
            return False
        self.conversation_id = conversation_id
        self.conversation_shown.emit(
            ConversationShown(conversation_id, summary.title, tuple(stored))
        )
        return True

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        try:
            self.history.rename_conversation(conversation_id, title)
        except HistoryError as error:
            self.problem.emit(str(error))
        self.conversations_changed.emit()

    def delete_conversation(self, conversation_id: int) -> bool:
        if self.turn is not None and self.turn.conversation_id == conversation_id:
            self.status_message.emit("Stop the reply before deleting its conversation.")
            return False
        try:
            self.history.delete_conversation(conversation_id)
        except HistoryError as error:
            self.problem.emit(str(error))
        if conversation_id == self.conversation_id:
            self.new_conversation()
        self.conversations_changed.emit()
        return True

    def _show_current(self) -> bool:
        if self.conversation_id is None:
            return False
        return self.open_conversation(self.conversation_id)

    # -- starting and steering a turn -------------------------------------------------------------

    def send(self, text: str, samples: int = 1, parallel: int | None = None) -> bool:
        """Add `text` as your message and start the reply; False if nothing was started.
        `samples` > 1 asks for a consensus, at most `parallel` samples decoding at once (None:
        as many as the engine fits)."""
        text = text.strip()
        if not text or not self.state.takes_messages:
            return False
        try:
            if self.conversation_id is None:
                # The title is the user's own words, never the model's.
                title = " ".join(text.split())[:TITLE_LENGTH]
                self.conversation_id = self.history.create_conversation(title)
                self.conversation_shown.emit(ConversationShown(self.conversation_id, title))
            message_id = self.history.add_user_message(self.conversation_id, text)
        except HistoryError as error:
            self.problem.emit(str(error))
            return False
        self.user_message_added.emit(message_id, text)
        self.conversations_changed.emit()
        return self._when_ready(lambda: self._start_turn(samples, parallel=parallel))

    def regenerate(self, samples: int = 1, parallel: int | None = None) -> bool:
        """Replace the last reply with a new one (its user message stays)."""
        if not self.state.takes_messages or self.conversation_id is None:
            return False
        try:
            stored = self.history.messages(self.conversation_id)
            last_user = next((m for m in reversed(stored) if m.role == "user"), None)
            if last_user is None:
                return False
            later = [m for m in stored if m.id > last_user.id]
            if later:
                self.history.delete_from_message(later[0].id)
        except HistoryError as error:
            self.problem.emit(str(error))
            return False
        self._show_current()
        return self._when_ready(lambda: self._start_turn(samples, parallel=parallel))

    def resend_edited(self, message_id: int, text: str) -> bool:
        """Your edited message replaces the old one; everything after it is dropped and redone."""
        if not self.state.takes_messages or self.conversation_id is None:
            return False
        try:
            self.history.edit_user_message(message_id, text)
        except HistoryError as error:
            self.problem.emit(str(error))
            return False
        self._show_current()
        self.conversations_changed.emit()
        return self._when_ready(self._start_turn)

    def continue_reply(self, message_id: int) -> bool:
        """Resume a stopped, interrupted or failed last reply from its saved text."""
        if not self.state.takes_messages or self.conversation_id is None:
            return False
        try:
            stored = self.history.messages(self.conversation_id)
        except HistoryError as error:
            self.problem.emit(str(error))
            return False
        last = stored[-1] if stored else None
        if last is None or last.id != message_id or not self.can_continue(last):
            return False
        return self._when_ready(lambda: self._start_turn(continuing=last))

    @staticmethod
    def can_continue(message: StoredMessage) -> bool:
        return (
            message.role == "assistant"
            and message.status in CONTINUABLE
            and bool((message.reasoning or "") + message.content)
            # A consensus reply is several replies and a vote; one of them cannot go on alone.
            and message.samples is None
        )

    def stop(self) -> None:
        if self.turn is not None and self.state is not SessionState.STOPPING:
            self.client.cancel()
            self._enter(SessionState.STOPPING)

    def answer_now(self) -> bool:
        """End the reasoning here and ask for the answer; False when there is none to end."""
        turn = self.turn
        if turn is None or self.state is not SessionState.REASONING:
            return False
        self.client.answer_now()  # with several samples, it ends the current one's reasoning
        turn.answered_early = turn.samples == 1
        self.status_message.emit("Asking for the answer now…")
        return True

    def _when_ready(self, start: Callable[[], bool]) -> bool:
        """Start now, or once the engine that failed is loaded again."""
        if self.state is SessionState.READY:
            return start()
        if self.state is SessionState.ENGINE_FAILED and self.reload():
            self._after_load = start
            return True
        return False

    def _engine_messages(
        self, stored: list[StoredMessage], continuing: StoredMessage | None
    ) -> list[ChatMessage]:
        turns = [m.to_chat_message() for m in stored if continuing is None or m.id != continuing.id]
        if continuing is not None:
            turns.append(dataclasses.replace(continuing.to_chat_message(), partial=True))
        return conversation_for_model(
            turns,
            system_prompt=self.store.system_prompt(),
            eval_preset=self.store.get("system_preset") == SystemPreset.FATHOM_EVAL,
        )

    def _start_turn(
        self,
        samples: int = 1,
        continuing: StoredMessage | None = None,
        parallel: int | None = None,
    ) -> bool:
        conversation_id, report = self.conversation_id, self.report
        if conversation_id is None or report is None or self.state is not SessionState.READY:
            return False
        sampling = self.store.sampling()
        history = self.history
        base_reasoning = (continuing.reasoning or "") if continuing else ""
        base_answer = continuing.content if continuing else ""
        try:
            stored = history.messages(conversation_id)
            if continuing is not None:
                # The continued reply takes the stored one's place, starting from its text.
                history.delete_from_message(continuing.id)
            message_id = history.begin_assistant_message(
                conversation_id, report.model_path.name, report.file_type, sampling
            )
            if continuing is not None:
                history.save_partial(message_id, base_reasoning, base_answer)
        except HistoryError as error:
            self.problem.emit(str(error))
            return False

        def save_partial(reasoning: str, answer: str) -> None:
            # Runs in the model thread, so the history's fsync never stalls the window.
            history.save_partial(message_id, base_reasoning + reasoning, base_answer + answer)

        def save_samples(records: tuple[SampleRecord, ...]) -> None:
            # Model thread, as above: a consensus keeps every sample so far.
            history.save_partial(message_id, "", "", [record.to_dict() for record in records])

        request = self.client.generate(
            self._engine_messages(stored, continuing),
            sampling,
            samples,
            save_partial,
            save_samples=save_samples if samples > 1 else None,
            parallel=parallel,
        )
        base_tokens = _recorded(continuing, "reasoning_tokens") if continuing else 0
        self.turn = Turn(
            request=request,
            conversation_id=conversation_id,
            message_id=message_id,
            base_reasoning=base_reasoning,
            base_answer=base_answer,
            base_reasoning_tokens=int(base_tokens),
            base_reasoning_seconds=_recorded(continuing, "reasoning_seconds") if continuing else 0,
        )
        self._enter(SessionState.READING_PROMPT)
        self.reply_started.emit(
            ReplyStarted(
                message_id,
                samples,
                base_reasoning,
                base_answer,
                int(base_tokens),
                self.turn.base_reasoning_seconds,
                continuing.id if continuing else None,
            )
        )
        self.usage_changed.emit(TokenUsage())
        return True

    # -- the engine client's reports --------------------------------------------------------------

    def _current(self, request_id: int) -> Turn | None:
        turn = self.turn
        if self._closed or turn is None or turn.request.request_id != request_id:
            return None
        return turn

    def _on_batch(self, batch: StreamBatch) -> None:
        turn = self._current(batch.request_id)
        if turn is None:
            return
        # A consensus reports through _on_consensus_batch; this is one reply's text.
        turn.reasoning.append(batch.reasoning)
        turn.answer.append(batch.answer)
        turn.reasoning_tokens = turn.base_reasoning_tokens + batch.reasoning_tokens
        turn.answer_tokens = batch.answer_tokens
        self.reply_text.emit(
            ReplyText(
                turn.message_id,
                batch.reasoning,
                batch.answer,
                turn.reasoning_tokens,
                turn.answer_tokens,
            )
        )
        now = time.monotonic()
        elapsed = now - turn.started
        self.usage_changed.emit(
            TokenUsage(
                turn.prompt_tokens,
                turn.reasoning_tokens - turn.base_reasoning_tokens,
                turn.answer_tokens,
                (turn.reasoning_tokens - turn.base_reasoning_tokens + turn.answer_tokens) / elapsed
                if elapsed > 0.5
                else None,
            )
        )

    def _on_consensus_batch(self, progress: ConsensusProgress) -> None:
        turn = self._current(progress.request_id)
        if turn is None:
            return
        for sample in progress.samples:
            live = turn.live_samples.get(sample.index)
            if live is None:
                live = turn.live_samples[sample.index] = LiveSample(sample.index)
            live.update(sample)
        self.consensus_progress.emit(progress)
        # The meter shows the sample nearest to filling its context; the speed is all samples'.
        samples = turn.live_samples.values()
        fullest = max(samples, key=lambda s: s.reasoning_tokens + s.answer_tokens)
        total = sum(s.reasoning_tokens + s.answer_tokens for s in samples)
        turn.reasoning_tokens = sum(s.reasoning_tokens for s in samples)
        turn.answer_tokens = sum(s.answer_tokens for s in samples)
        elapsed = time.monotonic() - turn.started
        self.usage_changed.emit(
            TokenUsage(
                turn.prompt_tokens,
                fullest.reasoning_tokens,
                fullest.answer_tokens,
                total / elapsed if elapsed > 0.5 else None,
            )
        )

    def _on_notice(self, notice: StreamNotice) -> None:
        turn = self._current(notice.request_id)
        if turn is None:
            return
        event = notice.event
        if isinstance(event, ContextTrimmed):
            self.context_trimmed.emit(event.dropped_messages)
            return
        assert isinstance(event, PhaseChanged)
        if event.prompt_tokens:
            turn.prompt_tokens = event.prompt_tokens
            self.usage_changed.emit(TokenUsage(turn.prompt_tokens))
        stopping = self.state is SessionState.STOPPING
        if event.phase is Phase.REASONING:
            turn.reasoning_started = turn.reasoning_started or time.monotonic()
            if turn.answer_started is None and not stopping:
                self._enter(SessionState.REASONING)
        elif event.phase is Phase.ANSWER and turn.samples == 1:
            turn.answer_started = turn.answer_started or time.monotonic()
            if not stopping:
                self._enter(SessionState.ANSWERING)
        self.reply_phase.emit(event.phase)

    def _on_done(self, done: GenerationDone) -> None:
        turn = self._current(done.request_id)
        if turn is None:
            return
        finished = done.finished
        stats = finished.stats
        if turn.base_reasoning_tokens:
            stats = dataclasses.replace(
                stats, reasoning_tokens=stats.reasoning_tokens + turn.base_reasoning_tokens
            )
        reasoning_seconds = turn.base_reasoning_seconds or None
        if turn.reasoning_started is not None:
            thought = (turn.answer_started or time.monotonic()) - turn.reasoning_started
            reasoning_seconds = turn.base_reasoning_seconds + thought
        if done.consensus is not None:
            self._finish_consensus(turn, done, reasoning_seconds)
            return
        record = stats_record(stats, reasoning_seconds)
        if turn.answered_early:
            record["answered_early"] = True
        reasoning = turn.base_reasoning + finished.reasoning
        answer = turn.base_answer + finished.answer
        stopped = stats.finish_reason is FinishReason.CANCELLED
        # A remote server's stream cut mid-reply: what came is kept, and Continue can go on.
        cut = stats.finish_reason is FinishReason.INTERRUPTED
        status = MessageStatus.STOPPED if stopped or cut else MessageStatus.COMPLETE
        self._finish_turn(
            turn, ReplyEnded(turn.message_id, status, reasoning, answer, record, stats)
        )
        self.usage_changed.emit(
            TokenUsage(
                stats.prompt_tokens,
                stats.reasoning_tokens - turn.base_reasoning_tokens,
                stats.answer_tokens,
                stats.decode_tokens_per_s,
            )
        )
        self.status_message.emit("Stopped." if stopped else "Done.")
        if cut:
            self.problem.emit(
                "The server's stream was cut off mid-reply; what came is kept. "
                "Continue or Regenerate to try again."
            )

    def _finish_consensus(
        self, turn: Turn, done: GenerationDone, reasoning_seconds: float | None
    ) -> None:
        """The winner's reasoning and answer are the reply; every sample and the vote are kept
        with it. A Stop ends every sample and keeps what each had written."""
        result = done.consensus
        assert result is not None
        winner = done.finished
        samples = tuple(SampleRecord.finished(i, s) for i, s in enumerate(result.samples))
        vote = VoteRecord.of(result, turn.samples, time.monotonic() - turn.started)
        record = stats_record(winner.stats, reasoning_seconds, vote)
        stopped = turn.request.control.cancel.is_set() or any(
            s.stats.finish_reason is FinishReason.CANCELLED for s in result.samples
        )
        status = MessageStatus.STOPPED if stopped else MessageStatus.COMPLETE
        ended = ReplyEnded(
            turn.message_id,
            status,
            winner.reasoning,
            winner.answer,
            record,
            winner.stats,
            samples=samples,
        )
        self._finish_turn(turn, ended)
        self.usage_changed.emit(
            TokenUsage(
                winner.stats.prompt_tokens,
                winner.stats.reasoning_tokens,
                winner.stats.answer_tokens,
                vote.tokens_per_s or None,
            )
        )
        self.status_message.emit("Stopped." if stopped else "Done.")

    def _on_failed(self, failed: GenerationFailed) -> None:
        turn = self._current(failed.request_id)
        if turn is None:
            return
        samples: tuple[SampleRecord, ...] = ()
        if turn.samples > 1:
            reasoning, answer = "", ""
            samples = turn.sample_records()
        else:
            # Every character that was shown stays, whatever ended the reply.
            reasoning = turn.base_reasoning + failed.reasoning
            answer = turn.base_answer + failed.answer
        record: dict = {
            "error": failed.message,
            "prompt_tokens": turn.prompt_tokens,
            "reasoning_tokens": turn.reasoning_tokens,
            "answer_tokens": turn.answer_tokens,
        }
        if failed.crash is not None:
            record["engine_crashed"] = True
        ended = ReplyEnded(
            turn.message_id,
            MessageStatus.ERROR,
            reasoning,
            answer,
            record,
            error=failed.message,
            samples=samples,
        )
        if failed.crash is not None:
            self._enter(SessionState.ENGINE_FAILED)  # never READY: the model is gone
        self._finish_turn(turn, ended)
        self.usage_changed.emit(
            TokenUsage(
                turn.prompt_tokens,
                turn.reasoning_tokens - turn.base_reasoning_tokens,
                turn.answer_tokens,
            )
        )
        if failed.crash is not None:
            self._engine_died(failed.crash, while_loading=False)

    def _finish_turn(self, turn: Turn, ended: ReplyEnded) -> None:
        self.turn = None
        try:
            self.history.finish_assistant_message(
                turn.message_id,
                ended.reasoning,
                ended.answer,
                ended.record,
                ended.status,
                [sample.to_dict() for sample in ended.samples] if turn.samples > 1 else None,
            )
        except HistoryError as error:
            self.problem.emit(str(error))
        if self.state.replying:
            self._enter(SessionState.READY)
        self.reply_finished.emit(ended)
        self.conversations_changed.emit()

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop any reply (saved as stopped), close the engine in its thread, join the thread."""
        if self._closed:
            return
        self._closed = True
        turn = self.turn
        self.turn = None
        self.client.cancel()
        if turn is not None:
            try:
                consensus = turn.samples > 1
                self.history.finish_assistant_message(
                    turn.message_id,
                    "" if consensus else turn.all_reasoning(),
                    "" if consensus else turn.all_answer(),
                    {"finish_reason": FinishReason.CANCELLED.value},
                    MessageStatus.STOPPED,
                    [s.to_dict() for s in turn.sample_records()] if consensus else None,
                )
            except HistoryError as error:
                log.warning("could not save the stopped reply: %s", error)
        self.client.close()


def _recorded(message: StoredMessage, key: str) -> float:
    """A figure recorded with a stored reply (0 when it kept none)."""
    try:
        return float((message.stats or {}).get(key) or 0)
    except (TypeError, ValueError):
        return 0.0
