"""Opening a history file whatever state it is in, without ever losing or altering it.

`open_store` decides how a history can be used:
- healthy: read and written in place;
- readable but not writable (a read-only file or folder, another program holding the write
  lock): read in place, with this session's changes kept in memory and retried;
- damaged (a corrupt page, random bytes, not SQLite at all): the file is moved aside, byte for
  byte as it was, to `history.<when>.unreadable.sqlite3` (with its -wal and -shm), a fresh
  history takes its place, and every row that can still be read is copied into it;
- not readable at all (locked exclusively, no permission, newer schema): a scratch history in a
  temporary folder, for this session only.
Each way but the first leaves a one-line `notice` for the window.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fathom_desktop.history.records import (
    SCHEMA_VERSION,
    HistoryError,
    migrate,
    newer_schema_text,
    schema_version,
)
from fathom_desktop.history.salvage import Salvaged, salvage

# SQLite result codes (low byte of an extended code).
_BUSY, _LOCKED, _READONLY, _CORRUPT, _NOTADB = 5, 6, 8, 11, 26
_DAMAGED = frozenset({_CORRUPT, _NOTADB})
_IN_USE = frozenset({_BUSY, _LOCKED})
_SIDE_FILES = ("-wal", "-shm")

# Waiting at start-up for another program's lock: long enough for a short write to finish,
# short enough that the window is not held back.
START_BUSY_TIMEOUT_S = 1.0


class StoreMode(StrEnum):
    IN_PLACE = "in place"  # the user's file, read and written
    READ_ONLY = "read-only"  # the user's file, read; changes kept in memory and retried
    SCRATCH = "scratch"  # a temporary file for this session only


@dataclass(frozen=True)
class OpenedStore:
    mode: StoreMode
    path: Path  # the file read and written: the user's, or the scratch one
    reader_uri: str  # for sqlite3.connect(..., uri=True)
    notice: str | None = None  # one line for the window, when it is not simply in place
    moved_to: Path | None = None  # where a damaged file now is
    salvaged: Salvaged | None = None
    scratch_dir: Path | None = None  # removed when the history closes


def open_store(path: Path) -> OpenedStore:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return _scratch(f"The history folder {path.parent} cannot be used ({_reason(error)})")
    if not path.exists() or path.stat().st_size == 0:
        return _fresh(path)
    found_beside = _side_files(path)
    problem = _check(path)
    if problem is None:
        return _in_place(path)
    if problem.damaged:
        return _replace_damaged(path, problem.reason, found_beside)
    if problem.in_use:
        return _scratch(f"The history at {path} is locked by another program ({problem.reason})")
    if problem.newer:
        return _scratch(problem.reason)
    return _scratch(f"The history at {path} cannot be read ({problem.reason})")


# -- the ways a history is opened ------------------------------------------------------------


def _in_place(path: Path) -> OpenedStore:
    reader = reader_uri(path)
    try:
        _prepare(path)
    except HistoryError as error:
        return _scratch(str(error).rstrip("."))
    except sqlite3.Error as error:
        code = _code(error)
        if _version(reader) != SCHEMA_VERSION:
            return _scratch(f"The history at {path} cannot be updated ({_reason(error)})")
        if code in _IN_USE:
            notice = (
                f"The history at {path} is in use by another program: new messages are kept in"
                " memory and saved as soon as it is free."
            )
        else:
            notice = _read_only_notice(f"{path} is read-only ({_reason(error)})")
        return OpenedStore(StoreMode.READ_ONLY, path, reader, notice)
    if not _writable(path):
        notice = _read_only_notice(f"{path} is read-only")
        return OpenedStore(StoreMode.READ_ONLY, path, reader, notice)
    return OpenedStore(StoreMode.IN_PLACE, path, reader)


def _read_only_notice(what: str) -> str:
    # Honest about the limit: what waits in memory is lost if the app closes first.
    return (
        f"The history at {what}: new messages are kept in memory, and saved if it becomes"
        " writable before the app closes."
    )


def _fresh(path: Path) -> OpenedStore:
    try:
        _prepare(path)
    except (sqlite3.Error, HistoryError) as error:
        return _scratch(f"A history cannot be created at {path} ({_reason(error)})")
    return OpenedStore(StoreMode.IN_PLACE, path, reader_uri(path))


def _replace_damaged(path: Path, reason: str, found_beside: frozenset[str]) -> OpenedStore:
    aside = _aside_name(path)
    try:
        _move_aside(path, aside, found_beside)
    except OSError as error:
        # The folder is read-only: leave the file where it is and rescue what we can anyway.
        opened = _scratch(f"The history at {path} is damaged ({reason}) and cannot be moved aside"
                          f" ({_reason(error)})")  # fmt: skip
        return _with_salvage(opened, _salvage_from(path, found_beside, opened.path))
    try:
        _prepare(path)
    except (sqlite3.Error, HistoryError) as error:
        opened = _scratch(f"The damaged history was moved to {aside}, but a new one cannot be"
                          f" created at {path} ({_reason(error)})")  # fmt: skip
        return _with_salvage(opened, _salvage_from(aside, found_beside, opened.path))
    found = _salvage_from(aside, found_beside, path)
    notice = (
        f"The history could not be read ({reason}); it was moved to {aside} and a new one was"
        f" started with {found.summary()}."
    )
    return OpenedStore(
        StoreMode.IN_PLACE, path, reader_uri(path), notice, moved_to=aside, salvaged=found
    )


def _salvage_from(damaged: Path, found_beside: frozenset[str], target: Path) -> Salvaged:
    """Salvage, then remove the lock files SQLite made beside the damaged file, if any."""
    if "-wal" in found_beside:
        found = salvage(reader_uri(damaged), target)
    else:
        # No log to replay: `immutable` reads the main file and makes nothing beside it.
        found = salvage(reader_uri(damaged).replace("mode=ro", "immutable=1"), target)
    _remove_made_beside(damaged, found_beside)
    return found


def _scratch(why: str) -> OpenedStore:
    folder = Path(tempfile.mkdtemp(prefix="fathom-history-"))
    path = folder / "history.sqlite3"
    _prepare(path)
    notice = f"{why}; this session's conversations are kept only until the app closes."
    return OpenedStore(StoreMode.SCRATCH, path, reader_uri(path), notice, scratch_dir=folder)


def _with_salvage(opened: OpenedStore, found: Salvaged) -> OpenedStore:
    notice = (opened.notice or "").rstrip(".") + f" ({found.summary()} shown)."
    return OpenedStore(
        opened.mode,
        opened.path,
        opened.reader_uri,
        notice,
        salvaged=found,
        scratch_dir=opened.scratch_dir,
    )


def remove_scratch(opened: OpenedStore) -> None:
    if opened.scratch_dir is not None:
        shutil.rmtree(opened.scratch_dir, ignore_errors=True)


# -- pieces -----------------------------------------------------------------------------------


def connect_writer(path: Path, busy_timeout_s: float = START_BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """The write connection: autocommit, WAL, durable commits, foreign keys enforced."""
    db = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # FULL makes each commit durable against power loss too, not only against a killed
        # app; the fsync happens on the writer's thread, never the window's.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        db.close()
        raise
    return db


def reader_uri(path: Path) -> str:
    """A read-only URI; SQLite never writes the database or its WAL through it."""
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"


def connect_reader(uri: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open `uri` read-only; in a read-only folder without a WAL, read the file as it stands."""
    try:
        db = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.Error as error:
        if _code(error) != _READONLY:
            raise
    # SQLITE_READONLY_DIRECTORY: no -shm can be made beside it. With no -wal either, the main
    # file is the whole database and `immutable` reads it without any lock file.
    immutable = uri.replace("mode=ro", "immutable=1")
    return sqlite3.connect(immutable, uri=True, check_same_thread=False)


def _prepare(path: Path) -> None:
    db = connect_writer(path)
    try:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"write-ahead logging is unavailable (got {mode})")
        migrate(db, path)
        # Take the write lock once, so that a lock held by another program shows now, at open.
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    finally:
        db.close()


def _writable(path: Path) -> bool:
    """SQLite opens a file it may not write read-only, without a word: ask the system."""
    if not os.access(path, os.W_OK):
        return False
    sides = [Path(f"{path}{side}") for side in _SIDE_FILES]
    return os.access(path.parent, os.W_OK) or all(os.access(s, os.W_OK) for s in sides)


@dataclass(frozen=True)
class _Problem:
    reason: str
    damaged: bool = False
    in_use: bool = False
    newer: bool = False  # then `reason` is the whole sentence


def _check(path: Path) -> _Problem | None:
    """Read every page through a read-only connection: None if the history is sound."""
    try:
        db = connect_reader(reader_uri(path), START_BUSY_TIMEOUT_S)
    except sqlite3.Error as error:
        return _problem(error)
    try:
        verdict = [row[0] for row in db.execute("PRAGMA quick_check")]
        if verdict != ["ok"]:
            return _Problem(f"{verdict[0]}", damaged=True)
        version = schema_version(db)
        if version > SCHEMA_VERSION:
            return _Problem(newer_schema_text(path, version).rstrip("."), newer=True)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if version == SCHEMA_VERSION and not {"conversations", "messages"} <= tables:
            return _Problem("it is not a Fathom Desktop history", damaged=True)
    except sqlite3.Error as error:
        return _problem(error)
    finally:
        db.close()
    return None


def _problem(error: sqlite3.Error) -> _Problem:
    code = _code(error)
    return _Problem(_reason(error), damaged=code in _DAMAGED, in_use=code in _IN_USE)


def _version(uri: str) -> int | None:
    try:
        db = connect_reader(uri, START_BUSY_TIMEOUT_S)
        try:
            return schema_version(db)
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    candidate = path.with_name(f"{path.stem}.{stamp}.unreadable{path.suffix}")
    n = 2
    while any(Path(f"{candidate}{side}").exists() for side in ("", *_SIDE_FILES)):
        candidate = path.with_name(f"{path.stem}.{stamp}-{n}.unreadable{path.suffix}")
        n += 1
    return candidate


def _side_files(path: Path) -> frozenset[str]:
    return frozenset(side for side in _SIDE_FILES if Path(f"{path}{side}").exists())


def _move_aside(path: Path, aside: Path, found_beside: frozenset[str]) -> None:
    """Rename (never copy or rewrite) the file with the WAL and shared memory it came with."""
    path.rename(aside)
    for side in found_beside:
        Path(f"{path}{side}").rename(Path(f"{aside}{side}"))
    # What the read-only check left beside it (an empty log, a shared-memory index) is ours.
    _remove_made_beside(path, found_beside)


def _remove_made_beside(path: Path, found_beside: frozenset[str]) -> None:
    for side in set(_SIDE_FILES) - found_beside:
        with contextlib.suppress(OSError):
            Path(f"{path}{side}").unlink(missing_ok=True)


def _code(error: sqlite3.Error) -> int:
    return getattr(error, "sqlite_errorcode", 0) & 0xFF


def _reason(error: BaseException) -> str:
    return str(error).rstrip(".") or type(error).__name__
