"""What the history holds: conversations, messages, their statuses, and the SQLite schema.

The schema version is SQLite's PRAGMA user_version; `MIGRATIONS[n]` takes version n to n+1.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path

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
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


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
    # A consensus reply's samples, in sampling order, each as `sample_record` writes it (its
    # reasoning, answer, boxed value, token counts and finish reason); None for other messages.
    samples: tuple[dict, ...] | None = None

    def to_chat_message(self) -> ChatMessage:
        return ChatMessage(role=self.role, content=self.content, reasoning=self.reasoning)


MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
    # 1 -> 2: a consensus reply keeps every sample, not only the winner (JSON, like stats).
    ("ALTER TABLE messages ADD COLUMN samples TEXT",),
)
SCHEMA_VERSION = len(MIGRATIONS)

CONVERSATION_COLUMNS = "id, title, created_at, updated_at"
MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, reasoning, status, model_file, quant, sampling, stats, "
    "created_at, updated_at, samples"
)


def migrate(db: sqlite3.Connection, where: Path) -> None:
    """Bring an autocommit connection's database to SCHEMA_VERSION, one transaction a step."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise HistoryError(newer_schema_text(where, version))
    while version < SCHEMA_VERSION:
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            version = schema_version(db)
            if version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                # user_version is part of the transaction, so a failed step leaves no trace.
                db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        version = schema_version(db)


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def newer_schema_text(where: Path, version: int) -> str:
    return (
        f"The history at {where} was written by a newer Fathom Desktop "
        f"(schema {version}; this version knows up to {SCHEMA_VERSION})."
    )


def message_from_row(row: tuple) -> StoredMessage:
    (id_, conversation_id, role, content, reasoning, status, model_file, quant, sampling, stats,
     created_at, updated_at, samples) = row  # fmt: skip
    return StoredMessage(
        id=id_,
        conversation_id=conversation_id,
        role=role,
        content=content,
        reasoning=reasoning,
        status=MessageStatus(status),
        model_file=model_file,
        quant=quant,
        sampling=from_json(sampling),
        stats=from_json(stats),
        created_at=created_at,
        updated_at=updated_at,
        samples=samples_from_json(samples),
    )


def message_to_row(message: StoredMessage) -> tuple:
    """The values for an INSERT of MESSAGE_COLUMNS, in that order."""
    return (
        message.id,
        message.conversation_id,
        message.role,
        message.content,
        message.reasoning,
        message.status.value,
        message.model_file,
        message.quant,
        to_json(message.sampling),
        to_json(message.stats),
        message.created_at,
        message.updated_at,
        samples_to_json(message.samples),
    )


def to_json(value: object) -> str | None:
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


def from_json(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def samples_to_json(samples: tuple[dict, ...] | list[dict] | None) -> str | None:
    return None if samples is None else json.dumps(list(samples), ensure_ascii=False)


def samples_from_json(text: str | None) -> tuple[dict, ...] | None:
    """The stored samples; None when there are none or the text is not a list of records."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return None
    return tuple(value)


def as_dict(value: object) -> dict | None:
    """A sampling or stats value as the dict a read gives back (the JSON round trip)."""
    return from_json(to_json(value))
