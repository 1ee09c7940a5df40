"""The history's one writer: a thread that owns the write connection and works through a queue.

Callers never wait for the disk. A change that cannot be written now (the file is locked by
another program, read-only, on a full disk) stays at the head of the queue, in order, and is
retried with a growing pause until it goes through; listeners hear when saving stops and when it
resumes. Only a change SQLite refuses for good (a constraint it breaks) is dropped, and that is
reported too.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from fathom_desktop.history.changes import Change, SavePartial

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
LAST_RETRY_S = 2.0

# SQLite result codes (the low byte of an extended code) that retrying cannot fix.
_SQLITE_CONSTRAINT = 19
_SQLITE_MISMATCH = 20
_SQLITE_TOOBIG = 18
_SQLITE_RANGE = 25
_REFUSED_FOR_GOOD = frozenset({_SQLITE_CONSTRAINT, _SQLITE_MISMATCH, _SQLITE_TOOBIG, _SQLITE_RANGE})


class WriteStatus(StrEnum):
    WAITING = "waiting"  # a change could not be written; it is kept and retried
    SAVED = "saved"  # every change that waited has been written
    DROPPED = "dropped"  # SQLite refused a change for good


@dataclass(frozen=True)
class WriteReport:
    """What listeners hear; `message` is one line for the window."""

    status: WriteStatus
    message: str
    waiting: int  # changes still queued
    unsaved_message_ids: frozenset[int]  # messages with a change not yet in the file
    # The message of the change this is about (the one that waits, or was dropped), if any.
    message_id: int | None = None


Connect = Callable[[], sqlite3.Connection]
Listener = Callable[[WriteReport], None]


class Writer:
    def __init__(self, connect: Connect, place: str) -> None:
        self._connect = connect
        self._place = place  # "the history at PATH", for messages
        self._db: sqlite3.Connection | None = None
        self._queue: deque[Change] = deque()
        self._in_flight: Change | None = None
        self._changed = threading.Condition()
        self._stopping = False
        self._stop_by = 0.0
        self._failing: str | None = None  # the reason the head change waits, while it does
        self._listeners: list[Listener] = []
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    # -- the callers' side ------------------------------------------------------------------

    def submit(self, change: Change) -> None:
        with self._changed:
            if self._stopping:
                raise RuntimeError("the history writer is closed")
            last = self._queue[-1] if self._queue else None
            if (
                isinstance(change, SavePartial)
                and isinstance(last, SavePartial)
                and last.message_id == change.message_id
            ):
                # While saving is stalled, keep only a reply's newest text, not one copy a save.
                self._queue[-1] = change
            else:
                self._queue.append(change)
            self._changed.notify_all()

    def pending(self) -> list[Change]:
        """The changes not yet known to be in the file, oldest first."""
        with self._changed:
            head = [self._in_flight] if self._in_flight is not None else []
            return head + list(self._queue)

    def add_listener(self, listener: Listener) -> None:
        """`listener` is called on the writer's thread; a GUI re-posts it to its own."""
        with self._changed:
            self._listeners.append(listener)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued change is written; False if some still wait."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._queue or self._in_flight is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self, timeout_s: float) -> int:
        """Try to write what waits for up to `timeout_s`, then stop; returns what was not saved."""
        with self._changed:
            self._stopping = True
            self._stop_by = time.monotonic() + timeout_s
            self._changed.notify_all()
        self._thread.join()
        with self._changed:
            unsaved = len(self._queue)
        if self._db is not None:
            self._db.close()
            self._db = None
        return unsaved

    # -- the writer's thread ------------------------------------------------------------------

    def _run(self) -> None:
        pause = FIRST_RETRY_S
        while True:
            with self._changed:
                while not self._queue and not self._stopping:
                    self._changed.wait()
                if not self._queue:
                    return
                change = self._in_flight = self._queue.popleft()
            failure = self._write(change)
            with self._changed:
                self._in_flight = None
                if failure is None:
                    pause = FIRST_RETRY_S
                    recovered = self._failing is not None and not self._queue
                    if recovered:
                        self._failing = None
                    self._changed.notify_all()
                    report = (
                        self._report(WriteStatus.SAVED, self._saved_text()) if recovered else None
                    )
                elif failure.for_good:
                    self._changed.notify_all()
                    report = self._report(WriteStatus.DROPPED, failure.text, change)
                else:
                    self._queue.appendleft(change)
                    report = None
                    if self._failing != failure.text:
                        self._failing = failure.text
                        report = self._report(WriteStatus.WAITING, failure.text, change)
            if report is not None:
                self._tell(report)
            if failure is not None and not failure.for_good:
                with self._changed:
                    if self._stopping and time.monotonic() >= self._stop_by:
                        return
                    wait = pause
                    if self._stopping:
                        wait = min(pause, max(0.0, self._stop_by - time.monotonic()))
                    self._changed.wait(wait)
                pause = min(pause * 2, LAST_RETRY_S)

    def _write(self, change: Change) -> _Failure | None:
        try:
            if self._db is None:
                self._db = self._connect()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                change.run(db)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            for_good = code in _REFUSED_FOR_GOOD
            if not for_good:
                self._reset()  # a connection that hit a read-only or vanished file is reopened
            return _Failure(self._failure_text(change, error, for_good), for_good)
        except Exception as error:  # a bug in a change must not stop every later write
            log.exception("history change %r failed", change)
            return _Failure(self._failure_text(change, error, True), True)
        return None

    def _reset(self) -> None:
        if self._db is not None:
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._db.close()
            self._db = None

    def _failure_text(self, change: Change, error: Exception, for_good: bool) -> str:
        # Short enough for one line of the window's banner; the path is in the start-up notice.
        reason = str(error).rstrip(".") or type(error).__name__
        if for_good:
            return f"Could not save {change.what} ({reason}); it was left out of the history."
        return (
            f"Could not save {change.what} yet ({reason}); it is kept and saved as soon as the"
            " history can be written."
        )

    def _saved_text(self) -> str:
        return f"Everything that waited is now saved in {self._place}."

    def _report(
        self, status: WriteStatus, message: str, change: Change | None = None
    ) -> WriteReport:
        # Called with the lock held, so the queue cannot change under it.
        changes = ([self._in_flight] if self._in_flight is not None else []) + list(self._queue)
        unsaved = frozenset(c.message_id for c in changes if c.message_id is not None)
        about = change.message_id if change is not None else None
        return WriteReport(status, message, len(changes), unsaved, about)

    def _tell(self, report: WriteReport) -> None:
        with self._changed:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(report)
            except Exception:
                log.exception("a history listener failed")


@dataclass(frozen=True)
class _Failure:
    text: str
    for_good: bool
