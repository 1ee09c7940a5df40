"""Changes to the history: what the writer thread runs, and what reads see until it has.

Every change carries the ids it touches (ids are given out by `History`, not by SQLite), so a
change that has not reached the file yet can be laid over what a read found there. Laying a
change over is idempotent: a read takes the list of waiting changes *before* it reads the file,
so a change the writer commits in between is both in the file and in the list, and applying it
again must give the same result.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass

from fathom_desktop.history.records import (
    MESSAGE_COLUMNS,
    MessageStatus,
    StoredMessage,
    message_to_row,
    samples_to_json,
    to_json,
)


@dataclass
class ConversationRow:
    """A conversation as a read assembles it (its message count is counted afterwards)."""

    id: int
    title: str
    created_at: float
    updated_at: float


Messages = dict[int, StoredMessage]


def _tuple(samples: tuple[dict, ...] | list[dict]) -> tuple[dict, ...]:
    # Changes read back from an unsaved-changes file carry lists where JSON had arrays.
    return tuple(samples)


class Change:
    """One write: `run` does it on the write connection, the `on_*` methods lay it over reads."""

    # Declared by each change (as a field, or None where it has none).
    conversation_id: int | None
    message_id: int | None
    what = "a change"  # for the one line the window shows when it cannot be saved

    def run(self, db: sqlite3.Connection) -> None:
        raise NotImplementedError

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        """Update `messages` (some of one conversation's messages, by id) in place."""

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        """The conversation `self.conversation_id` after this change."""
        return row


def _touch(db: sqlite3.Connection, conversation_id: int, now: float) -> None:
    db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))


def _touched(row: ConversationRow | None, now: float) -> ConversationRow | None:
    return dataclasses.replace(row, updated_at=now) if row is not None else None


@dataclass(frozen=True)
class NewConversation(Change):
    conversation_id: int
    message_id = None
    title: str
    now: float
    what = "a new conversation"

    def run(self, db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT OR IGNORE INTO conversations (id, title, created_at, updated_at) "
            "VALUES (?, ?, ?, ?)",
            (self.conversation_id, self.title, self.now, self.now),
        )

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        if row is not None:
            return row
        return ConversationRow(self.conversation_id, self.title, self.now, self.now)


@dataclass(frozen=True)
class RenameConversation(Change):
    conversation_id: int
    message_id = None
    title: str
    what = "a conversation's new name"

    def run(self, db: sqlite3.Connection) -> None:
        db.execute(
            "UPDATE conversations SET title = ? WHERE id = ?", (self.title, self.conversation_id)
        )

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        return dataclasses.replace(row, title=self.title) if row is not None else None


@dataclass(frozen=True)
class DeleteConversation(Change):
    conversation_id: int
    message_id = None
    what = "deleting a conversation"

    def run(self, db: sqlite3.Connection) -> None:
        # ON DELETE CASCADE removes its messages in the same statement.
        db.execute("DELETE FROM conversations WHERE id = ?", (self.conversation_id,))

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        if conversation_id == self.conversation_id:
            messages.clear()

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        return None


@dataclass(frozen=True)
class NewMessage(Change):
    message: StoredMessage

    @property
    def conversation_id(self) -> int:  # type: ignore[override]
        return self.message.conversation_id

    @property
    def message_id(self) -> int:  # type: ignore[override]
        return self.message.id

    @property
    def what(self) -> str:  # type: ignore[override]
        return "your message" if self.message.role == "user" else "a reply"

    def run(self, db: sqlite3.Connection) -> None:
        placeholders = ", ".join("?" * len(MESSAGE_COLUMNS.split(",")))
        db.execute(
            f"INSERT OR IGNORE INTO messages ({MESSAGE_COLUMNS}) VALUES ({placeholders})",
            message_to_row(self.message),
        )
        _touch(db, self.conversation_id, self.message.created_at)

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        if conversation_id == self.conversation_id:
            messages.setdefault(self.message.id, self.message)

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        return _touched(row, self.message.created_at)


@dataclass(frozen=True)
class SavePartial(Change):
    conversation_id: int
    message_id: int
    reasoning: str
    answer: str
    now: float
    samples: tuple[dict, ...] | None = None  # a consensus reply's samples so far
    what = "a reply's latest text"

    def run(self, db: sqlite3.Connection) -> None:
        # A finished reply is never overwritten by a late partial save.
        db.execute(
            "UPDATE messages SET reasoning = ?, content = ?, updated_at = ?, "
            "samples = COALESCE(?, samples) WHERE id = ? AND status = ?",
            (
                self.reasoning,
                self.answer,
                self.now,
                samples_to_json(self.samples),
                self.message_id,
                MessageStatus.STREAMING.value,
            ),
        )

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        stored = messages.get(self.message_id)
        if stored is not None and stored.status is MessageStatus.STREAMING:
            messages[self.message_id] = dataclasses.replace(
                stored,
                reasoning=self.reasoning,
                content=self.answer,
                updated_at=self.now,
                samples=_tuple(self.samples) if self.samples is not None else stored.samples,
            )


@dataclass(frozen=True)
class FinishReply(Change):
    conversation_id: int
    message_id: int
    reasoning: str
    answer: str
    stats: dict | None
    status: MessageStatus
    now: float
    samples: tuple[dict, ...] | None = None  # a consensus reply's samples
    what = "a finished reply"

    def run(self, db: sqlite3.Connection) -> None:
        db.execute(
            "UPDATE messages SET reasoning = ?, content = ?, stats = ?, status = ?, "
            "updated_at = ?, samples = COALESCE(?, samples) WHERE id = ? AND role = 'assistant'",
            (
                self.reasoning,
                self.answer,
                to_json(self.stats),
                self.status.value,
                self.now,
                samples_to_json(self.samples),
                self.message_id,
            ),
        )
        _touch(db, self.conversation_id, self.now)

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        stored = messages.get(self.message_id)
        if stored is not None:
            messages[self.message_id] = dataclasses.replace(
                stored,
                reasoning=self.reasoning,
                content=self.answer,
                stats=self.stats,
                status=self.status,
                updated_at=self.now,
                samples=_tuple(self.samples) if self.samples is not None else stored.samples,
            )

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        return _touched(row, self.now)


@dataclass(frozen=True)
class EditUserMessage(Change):
    conversation_id: int
    message_id: int
    text: str
    now: float
    what = "your edited message"

    def run(self, db: sqlite3.Connection) -> None:
        db.execute(
            "UPDATE messages SET content = ?, updated_at = ? WHERE id = ?",
            (self.text, self.now, self.message_id),
        )
        db.execute(
            "DELETE FROM messages WHERE conversation_id = ? AND id > ?",
            (self.conversation_id, self.message_id),
        )
        _touch(db, self.conversation_id, self.now)

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        if conversation_id != self.conversation_id:
            return
        for later in [i for i in messages if i > self.message_id]:
            del messages[later]
        stored = messages.get(self.message_id)
        if stored is not None:
            messages[self.message_id] = dataclasses.replace(
                stored, content=self.text, updated_at=self.now
            )

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        return _touched(row, self.now)


@dataclass(frozen=True)
class DeleteFromMessage(Change):
    conversation_id: int
    message_id: int
    now: float
    what = "removing a reply"

    def run(self, db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
            (self.conversation_id, self.message_id),
        )
        _touch(db, self.conversation_id, self.now)

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        if conversation_id == self.conversation_id:
            for gone in [i for i in messages if i >= self.message_id]:
                del messages[gone]

    def on_conversation(self, row: ConversationRow | None) -> ConversationRow | None:
        return _touched(row, self.now)


@dataclass(frozen=True)
class MarkInterrupted(Change):
    """Replies found streaming on open: the app that wrote them died mid-reply."""

    message_ids: frozenset[int]
    conversation_id = None
    message_id = None
    what = "marking unfinished replies"

    def run(self, db: sqlite3.Connection) -> None:
        db.executemany(
            "UPDATE messages SET status = ? WHERE id = ? AND status = ?",
            [
                (MessageStatus.INTERRUPTED.value, i, MessageStatus.STREAMING.value)
                for i in sorted(self.message_ids)
            ],
        )

    def on_messages(self, conversation_id: int, messages: Messages) -> None:
        for message_id in self.message_ids & messages.keys():
            stored = messages[message_id]
            if stored.status is MessageStatus.STREAMING:
                messages[message_id] = dataclasses.replace(stored, status=MessageStatus.INTERRUPTED)
