"""One Fathom Desktop per user: a lock that dies with its process, and a way to wake the first.

The lock is an advisory `flock` on a file in the data folder. The kernel releases it when the
process ends, however it ends, so a crash, a `kill -9` or a PID reused by another program never
locks the user out; the PID written into the file only names the holder in messages.

A second start asks the first, over a Unix socket named after the user and the data folder, to
bring its window to the front, then exits with one line. (Plain sockets rather than Qt's
QLocalServer: the package leaves QtNetwork out.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "fathom-desktop.lock"
ALREADY_RUNNING = "Fathom Desktop is already running"
RAISE_REQUEST = b"raise\n"
RAISE_DONE = b"raised\n"
RAISE_TIMEOUT_MS = 5000
RETRY_S = 0.1


class InstanceLockError(Exception):
    """Another Fathom Desktop holds the lock, or it cannot be made; str(error) is one line."""

    def __init__(self, message: str, *, held: bool = False, holder: int | None = None) -> None:
        super().__init__(message)
        self.held = held  # another instance holds the lock (rather than: no lock can be made)
        self.holder = holder  # its PID, when the lock file names one


class InstanceLock:
    """Held from hold_instance_lock() until unlock() or the end of the process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def unlock(self) -> None:
        # The file stays: removing it could let two processes lock two different files.
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def data_folder(directory: Path | None = None) -> Path:
    from fathom_desktop import paths

    try:
        return directory or paths.data_dir()
    except OSError as error:
        raise InstanceLockError(f"fathom-desktop: cannot use the data folder: {error}") from None


def hold_instance_lock(directory: Path | None = None) -> InstanceLock:
    """Lock the data folder for this process's lifetime, or raise InstanceLockError."""
    path = data_folder(directory) / LOCK_FILE_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise InstanceLockError(
            f"fathom-desktop: cannot create the lock file {path} ({error.strerror})."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        named = f" (process {holder})" if holder else ""
        raise InstanceLockError(f"{ALREADY_RUNNING}{named}.", held=True, holder=holder) from None
    except OSError as error:
        os.close(fd)
        raise InstanceLockError(f"fathom-desktop: cannot lock {path} ({error.strerror}).") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return InstanceLock(path, fd)


def _holder(fd: int) -> int | None:
    try:
        first_line = os.pread(fd, 64, 0).split(b"\n", 1)[0]
        return int(first_line) if first_line.strip() else None
    except (OSError, ValueError):
        return None


def server_name(directory: Path) -> str:
    """One name per user and data folder."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return f"fathom-desktop-{os.getuid()}-{digest}"


def _address(name: str) -> str | bytes:
    # Linux's abstract namespace: no socket file, so none is ever left behind by a crash.
    if sys.platform.startswith("linux"):
        return b"\0" + name.encode()
    return os.path.join(tempfile.gettempdir(), name)


class InstanceServer(QObject):
    """Listens for later starts (on a thread of its own); `raise_requested` is emitted on the
    thread this object lives in, the GUI thread."""

    raise_requested = Signal()
    _posted = Signal()  # emitted on the listening thread

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # Auto connection: the listening thread is not this object's, so delivery is queued.
        self._posted.connect(self._deliver)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = _address(name)
        try:
            if isinstance(address, str) and os.path.exists(address):
                os.unlink(address)  # only the lock's holder gets here: the file is stale
            self._socket.bind(address)
            self._socket.listen(4)
            self.listening = True
        except OSError as error:
            log.warning("cannot listen for other starts: %s", error)
            self._socket.close()
            self.listening = False
            return
        self._thread = threading.Thread(target=self._serve, name="instance-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self.listening:
            self.listening = False
            # shutdown() wakes the thread's accept(); close() alone would not on Linux.
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
            self._socket.close()
            self._thread.join(timeout=1.0)

    def _serve(self) -> None:
        posted = self._posted
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            with connection:
                connection.settimeout(RAISE_TIMEOUT_MS / 1000)
                try:
                    if connection.recv(len(RAISE_REQUEST)) == RAISE_REQUEST:
                        posted.emit()
                        connection.sendall(RAISE_DONE)
                except (OSError, RuntimeError):
                    continue  # a client that went away, or the window that did

    @Slot()
    def _deliver(self) -> None:
        self.raise_requested.emit()


def ask_first_instance_to_raise(name: str, timeout_ms: int = RAISE_TIMEOUT_MS) -> bool:
    """Ask the running instance to bring its window forward; True once it says it will."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout_ms / 1000)
            try:
                client.connect(_address(name))
                client.sendall(RAISE_REQUEST)
                return client.recv(len(RAISE_DONE)) == RAISE_DONE
            except (FileNotFoundError, ConnectionRefusedError):
                pass  # the first instance takes the lock before it listens: it is starting
            except OSError:
                return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(RETRY_S)


def bring_to_front(window) -> None:
    if window.isMinimized():
        window.showNormal()
    window.show()
    window.raise_()
    window.activateWindow()
