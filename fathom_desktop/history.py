"""Conversations and messages in SQLite, written so that a crash or a kill loses under a second.

Every write is its own committed transaction (autocommit mode), the database runs in WAL mode,
and while a reply streams the caller saves the partial text every ~0.5 s. A reply that was still
streaming when the process died is found on the next open and marked interrupted, with whatever
text had been saved.

The schema version is SQLite's PRAGMA user_version; `_MIGRATIONS[n]` takes version n to n+1.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path

from fathom_desktop import paths
from fathom_desktop.engine.types import ChatMessage, Role


class HistoryError(Exception):
    """str(error) is one readable line for the user."""


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    STREAMING = "streaming"  # being written right now
    STOPPED = "stopped"  # the user pressed Stop
    ERROR = "error"  # the engine failed part-way
    INTERRUPTED = "interrupted"  # the app died while it streamed


FINAL_STATUSES = frozenset({MessageStatus.COMPLETE, MessageStatus.STOPPED, MessageStatus.ERROR})


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    created_at: float  # seconds since the epoch
    updated_at: float
    message_count: int


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: Role
    content: str  # the user's text, or the assistant's answer
    reasoning: str | None
    status: MessageStatus
    model_file: str | None
    quant: str | None
    sampling: dict | None
    stats: dict | None
    created_at: float
    updated_at: float

    def to_chat_message(self) -> ChatMessage:
        return ChatMessage(role=self.role, content=self.content, reasoning=self.reasoning)


_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            reasoning TEXT,
            status TEXT NOT NULL,
            model_file TEXT,
            quant TEXT,
            sampling TEXT,
            stats TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX messages_by_conversation ON messages (conversation_id, id)",
        "CREATE INDEX conversations_by_recency ON conversations (updated_at DESC)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, reasoning, status, model_file, quant, sampling, stats, "
    "created_at, updated_at"
)


class History:
    """The user's conversations. Safe to call from more than one thread (calls are serialised)."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else paths.history_db()
        self._clock = clock
        self._lock = threading.RLock()
        self.recovered_interrupted = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: each statement outside an explicit BEGIN is committed at once.
            self._db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as error:
            raise HistoryError(f"Could not open the history at {self.path}: {error}.") from error
        try:
            self._configure()
            self._migrate()
            self.recovered_interrupted = self._mark_interrupted()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise HistoryError(
                f"{self.path} is not a usable Fathom Desktop history database ({error})."
            ) from error
        except HistoryError:
            self._db.close()
            raise

    def _configure(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"{self.path} cannot use write-ahead logging (got {mode}).")
        # FULL makes each commit durable against power loss too, not only against a killed app;
        # the cost is one fsync per save (a few per second at most).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"The history at {self.path} was written by a newer Fathom Desktop "
                f"(schema {version}; this version knows up to {SCHEMA_VERSION})."
            )
        while version < SCHEMA_VERSION:
            with self._transaction():
                # Another process may have migrated while we waited for the write lock.
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version >= SCHEMA_VERSION:
                    break
                for statement in _MIGRATIONS[version]:
                    self._db.execute(statement)
                # user_version is part of the transaction, so a failed step leaves no trace.
                self._db.execute(f"PRAGMA user_version = {version + 1}")
            version += 1

    def _mark_interrupted(self) -> int:
        cursor = self._db.execute(
            "UPDATE messages SET status = ? WHERE status = ?",
            (MessageStatus.INTERRUPTED.value, MessageStatus.STREAMING.value),
        )
        return cursor.rowcount

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.ProgrammingError as error:
                raise HistoryError(f"The history at {self.path} is closed.") from error
            except sqlite3.Error as error:
                raise HistoryError(
                    f"Could not update the history at {self.path}: {error}."
                ) from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- conversations ---------------------------------------------------------------------

    def create_conversation(self, title: str) -> int:
        now = self._clock()
        with self._guard() as db:
            cursor = db.execute(
                "INSERT INTO conversations (title, created_at, updated_at) VALUES (?, ?, ?)",
                (title, now, now),
            )
            return _rowid(cursor)

    def conversation(self, conversation_id: int) -> ConversationSummary:
        with self._guard() as db:
            row = db.execute(
                "SELECT c.id, c.title, c.created_at, c.updated_at, "
                "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
                "FROM conversations c WHERE c.id = ?",
                (conversation_id,),
            ).fetchone()
        if row is None:
            raise HistoryError(f"There is no conversation {conversation_id}.")
        return ConversationSummary(*row)

    def list_conversations(self, search: str | None = None) -> list[ConversationSummary]:
        """Newest first; `search` matches titles and message text, ignoring case."""
        query = (
            "SELECT c.id, c.title, c.created_at, c.updated_at, "
            "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
            "FROM conversations c"
        )
        params: tuple[object, ...] = ()
        if search and search.strip():
            pattern = "%" + _escape_like(search.strip()) + "%"
            query += (
                " WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
                "WHERE m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\')"
            )
            params = (pattern, pattern)
        query += " ORDER BY c.updated_at DESC, c.id DESC"
        with self._guard() as db:
            return [ConversationSummary(*row) for row in db.execute(query, params)]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        with self._guard() as db:
            cursor = db.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)
            )
        _require_row(cursor, f"There is no conversation {conversation_id}.")

    def delete_conversation(self, conversation_id: int) -> None:
        with self._guard() as db:
            # ON DELETE CASCADE removes its messages in the same statement.
            cursor = db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        _require_row(cursor, f"There is no conversation {conversation_id}.")

    # -- messages ----------------------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        with self._guard() as db:
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        return [_message(row) for row in rows]

    def message(self, message_id: int) -> StoredMessage:
        with self._guard() as db:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        if row is None:
            raise HistoryError(f"There is no message {message_id}.")
        return _message(row)

    def add_user_message(self, conversation_id: int, text: str) -> int:
        return self._insert(conversation_id, "user", text, MessageStatus.COMPLETE)

    def add_system_message(self, conversation_id: int, text: str) -> int:
        return self._insert(conversation_id, "system", text, MessageStatus.COMPLETE)

    def edit_user_message(self, message_id: int, text: str) -> None:
        """Replace a user message's text; every later message in its conversation is dropped."""
        now = self._clock()
        with self._guard() as db, self._transaction():
            row = db.execute(
                "SELECT conversation_id, role FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise HistoryError(f"There is no message {message_id}.")
            conversation_id, role = row
            if role != "user":
                raise HistoryError("Only your own messages can be edited.")
            db.execute(
                "UPDATE messages SET content = ?, updated_at = ? WHERE id = ?",
                (text, now, message_id),
            )
            db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND id > ?",
                (conversation_id, message_id),
            )
            self._touch(conversation_id, now)

    def delete_from_message(self, message_id: int) -> None:
        """Delete a message and every later one in its conversation (e.g. to regenerate a reply)."""
        with self._guard() as db, self._transaction():
            row = db.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise HistoryError(f"There is no message {message_id}.")
            db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                (row[0], message_id),
            )
            self._touch(row[0], self._clock())

    def begin_assistant_message(
        self,
        conversation_id: int,
        model_file: str | Path | None,
        quant: str | None,
        sampling: Mapping[str, object] | object | None,
    ) -> int:
        """Record a reply that is about to stream; save_partial() then keeps it up to date."""
        return self._insert(
            conversation_id,
            "assistant",
            "",
            MessageStatus.STREAMING,
            reasoning="",
            model_file=str(model_file) if model_file is not None else None,
            quant=quant,
            sampling=_to_json(sampling),
        )

    def save_partial(self, message_id: int, reasoning: str, answer: str) -> None:
        with self._guard() as db:
            cursor = db.execute(
                "UPDATE messages SET reasoning = ?, content = ?, updated_at = ? "
                "WHERE id = ? AND status = ?",
                (reasoning, answer, self._clock(), message_id, MessageStatus.STREAMING.value),
            )
        _require_row(cursor, f"Message {message_id} is not a reply that is streaming.")

    def finish_assistant_message(
        self,
        message_id: int,
        reasoning: str,
        answer: str,
        stats: Mapping[str, object] | object | None,
        status: MessageStatus | str,
    ) -> None:
        status = MessageStatus(status)
        if status not in FINAL_STATUSES:
            raise HistoryError(f"A reply cannot finish as {status.value}.")
        now = self._clock()
        with self._guard() as db, self._transaction():
            cursor = db.execute(
                "UPDATE messages SET reasoning = ?, content = ?, stats = ?, status = ?, "
                "updated_at = ? WHERE id = ? AND role = 'assistant'",
                (reasoning, answer, _to_json(stats), status.value, now, message_id),
            )
            _require_row(cursor, f"There is no reply {message_id}.")
            row = db.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            self._touch(row[0], now)

    def _insert(
        self,
        conversation_id: int,
        role: Role,
        content: str,
        status: MessageStatus,
        *,
        reasoning: str | None = None,
        model_file: str | None = None,
        quant: str | None = None,
        sampling: str | None = None,
    ) -> int:
        now = self._clock()
        with self._guard() as db, self._transaction():
            exists = db.execute(
                "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if exists is None:
                raise HistoryError(f"There is no conversation {conversation_id}.")
            cursor = db.execute(
                "INSERT INTO messages (conversation_id, role, content, reasoning, status, "
                "model_file, quant, sampling, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    role,
                    content,
                    reasoning,
                    status.value,
                    model_file,
                    quant,
                    sampling,
                    now,
                    now,
                ),
            )
            self._touch(conversation_id, now)
            return _rowid(cursor)

    def _touch(self, conversation_id: int, now: float) -> None:
        self._db.execute(
            "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
        )


class PartialSaver:
    """Saves a streaming reply at most every `interval_s`; call offer() as text arrives."""

    def __init__(
        self,
        history: History,
        message_id: int,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._history = history
        self._message_id = message_id
        self._interval_s = interval_s
        self._clock = clock
        self._last_save = clock()

    def offer(self, reasoning: str, answer: str) -> bool:
        """Save if the interval has passed since the last save; return whether it saved."""
        now = self._clock()
        if now - self._last_save < self._interval_s:
            return False
        self._history.save_partial(self._message_id, reasoning, answer)
        self._last_save = now
        return True


def _message(row: tuple) -> StoredMessage:
    (id_, conversation_id, role, content, reasoning, status, model_file, quant, sampling, stats,
     created_at, updated_at) = row  # fmt: skip
    return StoredMessage(
        id=id_,
        conversation_id=conversation_id,
        role=role,
        content=content,
        reasoning=reasoning,
        status=MessageStatus(status),
        model_file=model_file,
        quant=quant,
        sampling=_from_json(sampling),
        stats=_from_json(stats),
        created_at=created_at,
        updated_at=updated_at,
    )


def _to_json(value: object) -> str | None:
    if value is None:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: object) -> object:
    # GenerationStats carries a FinishReason enum; paths appear in load options.
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be stored in the history")


def _from_json(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _rowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _require_row(cursor: sqlite3.Cursor, message: str) -> None:
    if cursor.rowcount == 0:
        raise HistoryError(message)
