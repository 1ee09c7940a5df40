"""One Fathom Desktop per user: a lock that dies with its process, and a way to wake the first.

The lock is an advisory `flock` on a file in the data folder. The kernel releases it when the
process ends, however it ends, so a crash, a `kill -9` or a PID reused by another program never
locks the user out; the PID written into the file only names the holder in messages.

A second start asks the first, over a QLocalServer named after the data folder, to bring its
window to the front, then exits with one line.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtNetwork import QLocalServer, QLocalSocket

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
    """One name per data folder (Qt makes it a socket in the temporary folder)."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return f"fathom-desktop-{digest}"


class InstanceServer(QObject):
    """Listens for later starts; `raise_requested` is emitted on the GUI thread."""

    raise_requested = Signal()

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._server = QLocalServer(self)
        # Only this user may connect (the socket lives in the shared temporary folder).
        self._server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        # Only the lock's holder gets here, so a socket left by a killed instance is stale.
        QLocalServer.removeServer(name)
        self._server.newConnection.connect(self._on_connection)
        self.listening = self._server.listen(name)
        if not self.listening:
            log.warning("cannot listen for other starts: %s", self._server.errorString())

    def close(self) -> None:
        self._server.close()

    @Slot()
    def _on_connection(self) -> None:
        while (socket := self._server.nextPendingConnection()) is not None:
            socket.setParent(self)
            socket.readyRead.connect(lambda s=socket: self._on_request(s))
            socket.disconnected.connect(socket.deleteLater)

    def _on_request(self, socket: QLocalSocket) -> None:
        if not socket.canReadLine():
            return
        if bytes(socket.readLine().data()) == RAISE_REQUEST:
            self.raise_requested.emit()
            socket.write(RAISE_DONE)
            socket.flush()
        socket.disconnectFromServer()


def ask_first_instance_to_raise(name: str, timeout_ms: int = RAISE_TIMEOUT_MS) -> bool:
    """Ask the running instance to bring its window forward; True once it says it did."""
    deadline = time.monotonic() + timeout_ms / 1000
    socket = QLocalSocket()
    # The first instance takes the lock before it can listen: while it starts, try again.
    while True:
        socket.connectToServer(name)
        if socket.waitForConnected(timeout_ms):
            break
        if time.monotonic() >= deadline:
            return False
        time.sleep(RETRY_S)
    socket.write(RAISE_REQUEST)
    socket.waitForBytesWritten(timeout_ms)
    answered = socket.waitForReadyRead(timeout_ms) and socket.canReadLine()
    reply = bytes(socket.readLine().data()) if answered else b""
    socket.abort()
    return reply == RAISE_DONE


def bring_to_front(window) -> None:
    if window.isMinimized():
        window.showNormal()
    window.show()
    window.raise_()
    window.activateWindow()
