"""`History`: the user's conversations, read at once and written by a background writer.

Reads run on a read-only connection and return at once (WAL lets them proceed while the writer
or another program holds the write lock). Writes are handed to `Writer` and return at once too:
ids are given out here, and every read lays the changes still waiting over what the file says,
so a caller sees its own writes immediately whether or not they have reached the disk. While
a reply streams the caller saves the partial text every ~0.5 s; a reply found still streaming
on the next open is marked interrupted, with whatever text had been saved.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from fathom_desktop import paths
from fathom_desktop.engine.types import Role
from fathom_desktop.history.changes import (
    Change,
    ConversationRow,
    DeleteConversation,
    DeleteFromMessage,
    EditUserMessage,
    FinishReply,
    MarkInterrupted,
    NewConversation,
    NewMessage,
    RenameConversation,
    SavePartial,
)
from fathom_desktop.history.records import (
    CONVERSATION_COLUMNS,
    FINAL_STATUSES,
    MESSAGE_COLUMNS,
    ConversationSummary,
    HistoryError,
    MessageStatus,
    StoredMessage,
    as_dict,
    message_from_row,
)
from fathom_desktop.history.recovery import (
    OpenedStore,
    StoreMode,
    connect_reader,
    connect_writer,
    open_store,
    remove_scratch,
)
from fathom_desktop.history.unsaved import (
    ForgetUnsaved,
    read_unsaved,
    unsaved_files,
    write_unsaved,
)
from fathom_desktop.history.writer import Listener, Writer

log = logging.getLogger(__name__)

# A read waits this long at most for a lock (in WAL mode only another program's exclusive
# locking mode or a crash recovery can make it wait at all).
READ_BUSY_TIMEOUT_S = 0.05
# The writer, off the GUI thread, waits this long for another program's lock before retrying.
WRITE_BUSY_TIMEOUT_S = 0.5
# How long close() keeps trying to write what still waits.
CLOSE_TIMEOUT_S = 5.0
# A second History on the same file in this process first lets the first one's writes land.
REOPEN_FLUSH_S = 5.0

_open_histories: weakref.WeakSet[History] = weakref.WeakSet()

_MESSAGE_COLUMNS_WITHOUT_TEXT = (
    MESSAGE_COLUMNS.replace("content, reasoning", "'', NULL")
    .replace("sampling, stats", "NULL, NULL")
    .replace("updated_at, samples", "updated_at, NULL")
)


class History:
    """The user's conversations. Safe to call from any thread; no call waits for the disk."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else paths.history_db()
        self._clock = clock
        for other in list(_open_histories):
            if other.path.resolve() == self.path.resolve():
                other.flush(REOPEN_FLUSH_S)
        try:
            self._store: OpenedStore = open_store(self.path)
        except (OSError, sqlite3.Error) as error:  # not even a scratch history can be made
            raise HistoryError(f"Could not open the history at {self.path}: {error}.") from error
        self._place = f"the history at {self.path}"
        try:
            self._reader = connect_reader(self._store.reader_uri, READ_BUSY_TIMEOUT_S)
            # Search ignores case in every script (SQLite's LIKE only folds ASCII), and matches
            # the text the same way for what waits in memory.
            self._reader.create_function("casefold", 1, _casefold, deterministic=True)
        except sqlite3.Error as error:
            remove_scratch(self._store)
            raise HistoryError(f"Could not open {self._place}: {error}.") from error
        self._read_lock = threading.Lock()
        self._ids = threading.Lock()
        self._next_conversation_id = self._max_id("conversations") + 1
        self._next_message_id = self._max_id("messages") + 1
        self._closed = False
        store_path = self._store.path
        self._writer = Writer(lambda: connect_writer(store_path, WRITE_BUSY_TIMEOUT_S), self._place)
        streaming = self._streaming_ids()
        if streaming:
            self._writer.submit(MarkInterrupted(frozenset(streaming)))
        self.recovered_interrupted = len(streaming)
        self.restored_unsaved = self._restore_unsaved()
        self.unsaved_at_close = 0
        self.unsaved_file: Path | None = None  # where close() kept what it could not save
        _open_histories.add(self)

    # -- how it opened, and how writing goes --------------------------------------------------

    @property
    def mode(self) -> StoreMode:
        return self._store.mode

    @property
    def notice(self) -> str | None:
        """One line for the window when the history is not simply the user's file, in place,
        or when changes the last session could not save are saved now."""
        restored = self.restored_unsaved
        if not restored:
            return self._store.notice
        note = (
            f"{restored} change{'' if restored == 1 else 's'} that could not be saved when the"
            " app last closed"
            + (" are saved now." if self.mode is StoreMode.IN_PLACE else " are shown again.")
        )
        return f"{self._store.notice} {note}" if self._store.notice else note

    @property
    def moved_to(self) -> Path | None:
        """Where a damaged history file was moved, untouched."""
        return self._store.moved_to

    def add_listener(self, listener: Listener) -> None:
        """Hear (on the writer's thread) when saving stalls, resumes, or drops a change."""
        self._writer.add_listener(listener)

    def unsaved_message_ids(self) -> frozenset[int]:
        """Messages with a change that has not reached the file yet."""
        return frozenset(c.message_id for c in self._writer.pending() if c.message_id is not None)

    def flush(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until every change is in the file; False if some still wait after `timeout_s`."""
        return self._writer.flush(timeout_s)

    def close(self) -> None:
        """Write what waits (trying for up to CLOSE_TIMEOUT_S), then let go of the file."""
        with self._read_lock:
            if self._closed:
                return
            self._closed = True
        # The reader goes first: the writer's connection, closing last, folds the WAL back
        # into the main file.
        self._reader.close()
        self._writer.close(CLOSE_TIMEOUT_S)
        waiting = self._writer.pending()
        self.unsaved_at_close = sum(not isinstance(c, ForgetUnsaved) for c in waiting)
        if self.unsaved_at_close and self.mode is not StoreMode.SCRATCH:
            self.unsaved_file = write_unsaved(self.path, waiting)
        if self.unsaved_at_close:
            log.warning(
                "%d changes could not be saved in %s (kept in %s)",
                self.unsaved_at_close,
                self._place,
                self.unsaved_file,
            )
        remove_scratch(self._store)
        _open_histories.discard(self)

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- conversations ---------------------------------------------------------------------

    def create_conversation(self, title: str) -> int:
        conversation_id = self._new_conversation_id()
        self._submit(NewConversation(conversation_id, title, self._clock()))
        return conversation_id

    def conversation(self, conversation_id: int) -> ConversationSummary:
        with self._reading() as pending:
            summary = self._summary(conversation_id, pending)
        if summary is None:
            raise HistoryError(f"There is no conversation {conversation_id}.")
        return summary

    def list_conversations(self, search: str | None = None) -> list[ConversationSummary]:
        """Newest first; `search` matches titles and message text, ignoring case."""
        query = (
            "SELECT c.id, c.title, c.created_at, c.updated_at, "
            "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
            "FROM conversations c"
        )
        params: tuple[object, ...] = ()
        needle = search.strip() if search else ""
        if needle:
            folded = needle.casefold()
            query += (
                " WHERE instr(casefold(c.title), ?) OR EXISTS (SELECT 1 FROM messages m "
                "WHERE m.conversation_id = c.id AND instr(casefold(m.content), ?))"
            )
            params = (folded, folded)
        with self._reading() as pending:
            found = {
                row[0]: ConversationSummary(*row) for row in self._reader.execute(query, params)
            }
            # Conversations a waiting change touches are judged on what they will be.
            for conversation_id in {c.conversation_id for c in pending} - {None}:
                assert conversation_id is not None
                found.pop(conversation_id, None)
                summary = self._summary(conversation_id, pending)
                if summary is not None and self._matches(summary, needle, pending):
                    found[conversation_id] = summary
        return sorted(found.values(), key=lambda c: (c.updated_at, c.id), reverse=True)

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self.conversation(conversation_id)
        self._submit(RenameConversation(conversation_id, title))

    def delete_conversation(self, conversation_id: int) -> None:
        self.conversation(conversation_id)
        self._submit(DeleteConversation(conversation_id))

    # -- messages ----------------------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        with self._reading() as pending:
            found = self._messages(conversation_id, pending)
        return sorted(found.values(), key=lambda m: m.id)

    def message(self, message_id: int) -> StoredMessage:
        with self._reading() as pending:
            found = self._message(message_id, pending)
        if found is None:
            raise HistoryError(f"There is no message {message_id}.")
        return found

    def add_user_message(self, conversation_id: int, text: str) -> int:
        return self._add(conversation_id, "user", text, MessageStatus.COMPLETE)

    def edit_user_message(self, message_id: int, text: str) -> None:
        """Replace a user message's text; every later message in its conversation is dropped."""
        stored = self.message(message_id)
        if stored.role != "user":
            raise HistoryError("Only your own messages can be edited.")
        self._submit(EditUserMessage(stored.conversation_id, message_id, text, self._clock()))

    def delete_from_message(self, message_id: int) -> None:
        """Delete a message and every later one in its conversation (e.g. to regenerate a reply)."""
        stored = self.message(message_id)
        self._submit(DeleteFromMessage(stored.conversation_id, message_id, self._clock()))

    def begin_assistant_message(
        self,
        conversation_id: int,
        model_file: str | Path | None,
        quant: str | None,
        sampling: Mapping[str, object] | object | None,
    ) -> int:
        """Record a reply that is about to stream; save_partial() then keeps it up to date."""
        return self._add(
            conversation_id,
            "assistant",
            "",
            MessageStatus.STREAMING,
            reasoning="",
            model_file=str(model_file) if model_file is not None else None,
            quant=quant,
            sampling=as_dict(sampling),
        )

    def save_partial(
        self,
        message_id: int,
        reasoning: str,
        answer: str,
        samples: Sequence[Mapping[str, object]] | None = None,
    ) -> None:
        """The streaming reply's text so far (and a consensus reply's samples so far)."""
        with self._reading() as pending:
            stored = self._message(message_id, pending)
        if stored is None or stored.status is not MessageStatus.STREAMING:
            raise HistoryError(f"Message {message_id} is not a reply that is streaming.")
        self._submit(
            SavePartial(
                stored.conversation_id,
                message_id,
                reasoning,
                answer,
                self._clock(),
                _samples(samples),
            )
        )

    def finish_assistant_message(
        self,
        message_id: int,
        reasoning: str,
        answer: str,
        stats: Mapping[str, object] | object | None,
        status: MessageStatus | str,
        samples: Sequence[Mapping[str, object]] | None = None,
    ) -> None:
        """End a reply with its final text, figures and status; a consensus reply also keeps
        every sample (`samples`, in sampling order)."""
        status = MessageStatus(status)
        if status not in FINAL_STATUSES:
            raise HistoryError(f"A reply cannot finish as {status.value}.")
        with self._reading() as pending:
            stored = self._message(message_id, pending)
        if stored is None or stored.role != "assistant":
            raise HistoryError(f"There is no reply {message_id}.")
        self._submit(
            FinishReply(
                stored.conversation_id,
                message_id,
                reasoning,
                answer,
                as_dict(stats),
                status,
                self._clock(),
                _samples(samples),
            )
        )

    # -- inside ------------------------------------------------------------------------------

    def _add(
        self,
        conversation_id: int,
        role: Role,
        content: str,
        status: MessageStatus,
        *,
        reasoning: str | None = None,
        model_file: str | None = None,
        quant: str | None = None,
        sampling: dict | None = None,
    ) -> int:
        self.conversation(conversation_id)  # raises if there is none
        message_id = self._new_message_id()
        now = self._clock()
        message = StoredMessage(
            id=message_id,
            conversation_id=conversation_id,
            role=role,
            content=content,
            reasoning=reasoning,
            status=status,
            model_file=model_file,
            quant=quant,
            sampling=sampling,
            stats=None,
            created_at=now,
            updated_at=now,
        )
        self._submit(NewMessage(message))
        return message_id

    def _submit(self, change: Change) -> None:
        if self._closed:
            raise HistoryError(f"The history at {self.path} is closed.")
        self._writer.submit(change)

    @contextmanager
    def _reading(self) -> Iterator[list[Change]]:
        """Hold the reader; yields the waiting changes, taken before anything is read."""
        with self._read_lock:
            if self._closed:
                raise HistoryError(f"The history at {self.path} is closed.")
            pending = self._writer.pending()
            try:
                yield pending
            except sqlite3.Error as error:
                raise HistoryError(f"Could not read {self._place}: {error}.") from error

    def _messages(
        self, conversation_id: int, pending: list[Change], *, texts: bool = True
    ) -> dict[int, StoredMessage]:
        # Without `texts` (to count messages) a long reasoning is not read just to be dropped.
        columns = MESSAGE_COLUMNS if texts else _MESSAGE_COLUMNS_WITHOUT_TEXT
        rows = self._reader.execute(
            f"SELECT {columns} FROM messages WHERE conversation_id = ?", (conversation_id,)
        )
        found = {message.id: message for message in map(message_from_row, rows)}
        for change in pending:
            change.on_messages(conversation_id, found)
        return found

    def _message(self, message_id: int, pending: list[Change]) -> StoredMessage | None:
        row = self._reader.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        found: dict[int, StoredMessage] = {}
        if row is not None:
            stored = message_from_row(row)
            found[message_id] = stored
            conversation_id = stored.conversation_id
        else:
            new = [c for c in pending if isinstance(c, NewMessage) and c.message_id == message_id]
            if not new:
                return None
            conversation_id = new[0].conversation_id
        for change in pending:
            change.on_messages(conversation_id, found)
        return found.get(message_id)

    def _summary(self, conversation_id: int, pending: list[Change]) -> ConversationSummary | None:
        row = self._reader.execute(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        conversation = ConversationRow(*row) if row is not None else None
        touched = False
        for change in pending:
            if change.conversation_id == conversation_id:
                conversation = change.on_conversation(conversation)
                touched = True
        if conversation is None:
            return None
        if touched:
            count = len(self._messages(conversation_id, pending, texts=False))
        else:
            count = self._reader.execute(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
        return ConversationSummary(
            conversation.id,
            conversation.title,
            conversation.created_at,
            conversation.updated_at,
            count,
        )

    def _matches(self, summary: ConversationSummary, needle: str, pending: list[Change]) -> bool:
        if not needle:
            return True
        needle = needle.casefold()
        if needle in summary.title.casefold():
            return True
        messages = self._messages(summary.id, pending).values()
        return any(needle in message.content.casefold() for message in messages)

    def _restore_unsaved(self) -> int:
        """Queue what the last session kept beside the history; returns how many changes."""
        if self.mode is StoreMode.SCRATCH:
            return 0  # a scratch history would take them and then vanish
        files = unsaved_files(self.path)
        if not files:
            return 0
        waiting = read_unsaved(files, self._new_conversation_id, self._new_message_id)
        for change in waiting:
            self._writer.submit(change)
        self._writer.submit(ForgetUnsaved(tuple(files)))
        return len(waiting)

    def _new_conversation_id(self) -> int:
        with self._ids:
            self._next_conversation_id += 1
            return self._next_conversation_id - 1

    def _new_message_id(self) -> int:
        with self._ids:
            self._next_message_id += 1
            return self._next_message_id - 1

    def _max_id(self, table: str) -> int:
        try:
            return int(
                self._reader.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
            )
        except sqlite3.Error:
            return 0

    def _streaming_ids(self) -> list[int]:
        try:
            rows = self._reader.execute(
                "SELECT id FROM messages WHERE status = ?", (MessageStatus.STREAMING.value,)
            )
            return [row[0] for row in rows]
        except sqlite3.Error:
            return []


def _samples(samples: Sequence[Mapping[str, object]] | None) -> tuple[dict, ...] | None:
    """Samples as a read gives them back (the JSON round trip), so waiting changes read alike."""
    if samples is None:
        return None
    return tuple(as_dict(dict(sample)) or {} for sample in samples)


def _casefold(text: object) -> object:
    return text.casefold() if isinstance(text, str) else text
