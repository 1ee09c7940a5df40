"""Copy every row that can still be read from a damaged history into a fresh one.

Python's sqlite3 has no `.recover`, so rows are found the slow, careful way: each table is
scanned forwards and backwards (a scan stops at the first bad page, from either end), its
indexes are read for ids the scans missed, and then every id in the range seen is looked up on
its own, so one bad page costs only the rows stored on it. A row is copied only if it reads
whole and makes sense (a known role and status, text where text belongs); a message whose
conversation was lost gets a stand-in conversation so that it stays reachable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fathom_desktop.history.records import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    ROLES,
    MessageStatus,
)

# Past this many ids between the smallest and largest seen, only ids found by scans are read:
# a damaged page can hold a wild id, and a lookup per id must stay bounded.
MAX_ID_SPAN = 2_000_000
LOST_TITLE = "Recovered conversation"


@dataclass(frozen=True)
class Salvaged:
    conversations: int
    messages: int

    def summary(self) -> str:
        c, m = self.conversations, self.messages
        return (
            f"{c} conversation{'' if c == 1 else 's'} and {m} message{'' if m == 1 else 's'}"
            " recovered"
        )


def salvage(source_uri: str, target: Path) -> Salvaged:
    """Copy what `source_uri` (opened read-only) still holds into the history at `target`."""
    try:
        source = sqlite3.connect(source_uri, uri=True, timeout=0)
    except sqlite3.Error:
        return Salvaged(0, 0)
    target_db = sqlite3.connect(target, isolation_level=None)
    try:
        found = _rows(source, "conversations", CONVERSATION_COLUMNS, ("conversations_by_recency",))
        conversations = {row[0]: row for row in found if _sound_conversation(row)}
        # A history from before consensus samples were kept has no `samples` column.
        columns = MESSAGE_COLUMNS if _has_samples(source) else _COLUMNS_BEFORE_SAMPLES
        messages = [
            row
            for row in _rows(source, "messages", columns, ("messages_by_conversation",))
            if _sound_message(row)
        ]
        for message in messages:
            conversation_id, created_at = message[1], message[10]
            if conversation_id not in conversations:
                title = f"{LOST_TITLE} {conversation_id}"
                conversations[conversation_id] = (conversation_id, title, created_at, created_at)
        target_db.execute("BEGIN IMMEDIATE")
        target_db.executemany(
            f"INSERT OR IGNORE INTO conversations ({CONVERSATION_COLUMNS}) VALUES (?, ?, ?, ?)",
            conversations.values(),
        )
        placeholders = ", ".join("?" * len(MESSAGE_COLUMNS.split(",")))
        target_db.executemany(
            f"INSERT OR IGNORE INTO messages ({MESSAGE_COLUMNS}) VALUES ({placeholders})",
            messages,
        )
        target_db.execute("COMMIT")
        return Salvaged(len(conversations), len(messages))
    except sqlite3.Error:
        if target_db.in_transaction:
            target_db.execute("ROLLBACK")
        return Salvaged(0, 0)
    finally:
        source.close()
        target_db.close()


def _rows(db: sqlite3.Connection, table: str, columns: str, indexes: Iterable[str]) -> list[tuple]:
    ids: set[int] = set()
    ids.update(_scan(db, f"SELECT rowid FROM {table} ORDER BY rowid"))
    ids.update(_scan(db, f"SELECT rowid FROM {table} ORDER BY rowid DESC"))
    for index in indexes:
        ids.update(_scan(db, f"SELECT id FROM {table} INDEXED BY {index}"))
    for bound in ("MIN", "MAX"):
        ids.update(_scan(db, f"SELECT {bound}(rowid) FROM {table}"))
    ids.discard(None)  # type: ignore[arg-type]
    if ids and max(ids) - min(ids) <= MAX_ID_SPAN:
        ids = set(range(max(1, min(ids)), max(ids) + 1))
    rows = []
    for row_id in sorted(ids):
        try:
            row = db.execute(f"SELECT {columns} FROM {table} WHERE rowid = ?", (row_id,)).fetchone()
        except sqlite3.Error:
            continue  # this row's page is damaged; the others may not be
        if row is not None:
            rows.append(row)
    return rows


_COLUMNS_BEFORE_SAMPLES = MESSAGE_COLUMNS.replace("updated_at, samples", "updated_at, NULL")


def _has_samples(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT samples FROM messages LIMIT 0")
    except sqlite3.Error:
        return False
    return True


def _scan(db: sqlite3.Connection, query: str) -> list[int]:
    """Every integer the query yields before it reaches damage."""
    found: list[int] = []
    try:
        for (value,) in db.execute(query):
            if isinstance(value, int):
                found.append(value)
    except sqlite3.Error:
        pass
    return found


def _sound_conversation(row: tuple) -> bool:
    id_, title, created_at, updated_at = row
    return (
        isinstance(id_, int)
        and isinstance(title, str)
        and isinstance(created_at, int | float)
        and isinstance(updated_at, int | float)
    )


_STATUSES = frozenset(status.value for status in MessageStatus)


def _sound_message(row: tuple) -> bool:
    (id_, conversation_id, role, content, reasoning, status, model_file, quant, sampling, stats,
     created_at, updated_at, samples) = row  # fmt: skip
    optional_text = (reasoning, model_file, quant, sampling, stats, samples)
    return (
        isinstance(id_, int)
        and isinstance(conversation_id, int)
        and role in ROLES
        and isinstance(content, str)
        and status in _STATUSES
        and all(value is None or isinstance(value, str) for value in optional_text)
        and isinstance(created_at, int | float)
        and isinstance(updated_at, int | float)
    )
