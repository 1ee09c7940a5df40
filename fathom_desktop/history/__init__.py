"""Conversations and messages in SQLite, written so that nothing the user typed is lost.

`store.History` is the API the app uses; `writer` writes off the caller's thread, `recovery`
opens a file whatever state it is in, `salvage` rescues the readable rows of a damaged one, and
`unsaved` keeps what could not be written by the time the app closes for the next start.
"""

from fathom_desktop.history.records import (
    FINAL_STATUSES,
    SCHEMA_VERSION,
    ConversationSummary,
    HistoryError,
    MessageStatus,
    StoredMessage,
)
from fathom_desktop.history.recovery import StoreMode
from fathom_desktop.history.salvage import Salvaged
from fathom_desktop.history.store import History
from fathom_desktop.history.writer import WriteReport, WriteStatus

__all__ = [
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "ConversationSummary",
    "History",
    "HistoryError",
    "MessageStatus",
    "Salvaged",
    "StoreMode",
    "StoredMessage",
    "WriteReport",
    "WriteStatus",
]
