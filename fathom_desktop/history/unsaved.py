"""Changes still waiting when the app closes, kept in a file beside the history until saved.

If the history stays locked or read-only until the app closes, what waits is written as JSON to
`history.unsaved-<when>.json` beside it. The next open queues those changes again, ahead of
anything new, with fresh ids for the conversations and messages they add (another program may
have used the old ones meanwhile), and removes the file once they are in the history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fathom_desktop.history import changes as kinds
from fathom_desktop.history.changes import Change, NewConversation, NewMessage
from fathom_desktop.history.records import MessageStatus, StoredMessage

FORMAT = 1
_KINDS: dict[str, type[Change]] = {
    cls.__name__: cls
    for cls in (
        kinds.NewConversation,
        kinds.RenameConversation,
        kinds.DeleteConversation,
        kinds.NewMessage,
        kinds.SavePartial,
        kinds.FinishReply,
        kinds.EditUserMessage,
        kinds.DeleteFromMessage,
        kinds.MarkInterrupted,
    )
}


@dataclass(frozen=True)
class ForgetUnsaved(Change):
    """Runs after the changes read back from `files`: they are in the history now."""

    files: tuple[Path, ...]
    conversation_id = None
    message_id = None
    what = "a note of changes saved"

    def run(self, db: sqlite3.Connection) -> None:
        forget(self.files)


def forget(files: tuple[Path, ...]) -> None:
    for path in files:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def unsaved_files(history: Path) -> list[Path]:
    return sorted(history.parent.glob(f"{history.stem}.unsaved-*.json"))


def write_unsaved(history: Path, waiting: list[Change]) -> Path | None:
    """Write what waits beside the history (whole, or not at all); None if it cannot be."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    target = history.with_name(f"{history.stem}.unsaved-{stamp}.json")
    n = 2
    while target.exists():
        target = history.with_name(f"{history.stem}.unsaved-{stamp}-{n}.json")
        n += 1
    records = [_record(c) for c in waiting if not isinstance(c, ForgetUnsaved)]
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as out:
            json.dump({"format": FORMAT, "changes": records}, out, ensure_ascii=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return None
    # What the changes read back at open were noted in is superseded by this file.
    for change in waiting:
        if isinstance(change, ForgetUnsaved):
            forget(change.files)
    return target


def read_unsaved(
    files: list[Path], new_conversation_id: Callable[[], int], new_message_id: Callable[[], int]
) -> list[Change]:
    """The changes kept in `files`, oldest first, with fresh ids for what they add."""
    found: list[Change] = []
    for path in files:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT:
                continue
            found.extend(_change(record) for record in document["changes"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: left where it is, for the user to look at
    conversations: dict[int, int] = {}
    messages: dict[int, int] = {}
    renewed: list[Change] = []
    for change in found:
        if isinstance(change, NewConversation):
            conversations[change.conversation_id] = new_conversation_id()
        elif isinstance(change, NewMessage):
            messages[change.message_id] = new_message_id()
        renewed.append(_renamed(change, conversations, messages))
    return renewed


def _renamed(change: Change, conversations: dict[int, int], messages: dict[int, int]) -> Change:
    if isinstance(change, NewMessage):
        message = change.message
        return NewMessage(
            dataclasses.replace(
                message,
                id=messages.get(message.id, message.id),
                conversation_id=conversations.get(message.conversation_id, message.conversation_id),
            )
        )
    if isinstance(change, kinds.MarkInterrupted):
        return change
    updates: dict[str, int] = {}
    for field in dataclasses.fields(change):  # type: ignore[arg-type]
        value = getattr(change, field.name)
        if field.name == "conversation_id":
            updates[field.name] = conversations.get(value, value)
        elif field.name == "message_id":
            updates[field.name] = messages.get(value, value)
    return dataclasses.replace(change, **updates)  # type: ignore[type-var]


def _record(change: Change) -> dict:
    record: dict[str, object] = {"kind": type(change).__name__}
    for field in dataclasses.fields(change):  # type: ignore[arg-type]
        value = getattr(change, field.name)
        if isinstance(value, StoredMessage):
            value = {**dataclasses.asdict(value), "status": value.status.value}
        elif isinstance(value, MessageStatus):
            value = value.value
        elif isinstance(value, frozenset):
            value = sorted(value)
        record[field.name] = value
    return record


def _change(record: dict) -> Change:
    cls = _KINDS[record.pop("kind")]
    if "message" in record:
        message = record["message"]
        samples = message.get("samples")
        record["message"] = StoredMessage(
            **{
                **message,
                "status": MessageStatus(message["status"]),
                "samples": tuple(samples) if samples is not None else None,
            }
        )
    if "status" in record:
        record["status"] = MessageStatus(record["status"])
    if record.get("samples") is not None:
        record["samples"] = tuple(record["samples"])
    if "message_ids" in record:
        record["message_ids"] = frozenset(record["message_ids"])
    return cls(**record)
