"""The window's side of the formula layout process (render/layout_host.py).

`LayoutService` drives one long-lived child from the GUI thread without ever waiting on it: a
request is a few bytes written to an empty pipe, the reply is read as it arrives (a socket
notifier, a non-blocking pipe) and copied into a QImage. No thread of the window runs Python for
formulas, so nothing competes with the GUI thread for the interpreter lock. Each formula gets
FORMULA_TIMEOUT_S: past it the child is killed, the formula is reported TooSlow (the window shows
its source with a note) and the next formula starts a fresh child. A child that dies on a formula
costs only that formula.

`LayoutProcess` is the same child asked and waited for, for code that may block (the self-test).

Why a subprocess with two pipes rather than multiprocessing's pool: a pool's "spawn" re-imports
the window's `__main__` (the whole window) in each worker, and a pool cannot kill one worker in
the middle of a task. `python -c LAYOUT_CODE` loads ziamath and Qt's image classes, nothing
else, and in the packaged app the launcher runs that exact line (packaging/launcher.py).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import select
import subprocess
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QSocketNotifier, QTimer

from fathom_desktop.render.formula_image import MAX_IMAGE_BYTES, MathImage, MathStyle, from_bytes
from fathom_desktop.render.layout_host import (
    FRAME,
    IMAGE,
    LAYOUT_CODE,
    READY,
    read_frame,
    write_frame,
)

log = logging.getLogger(__name__)

# The static bound (render/math.py) keeps a formula's layout under about half a second on a
# 2-core machine; this leaves room for a loaded machine before a formula is given up on.
FORMULA_TIMEOUT_S = 3.0
# Python, ziamath with its font tables and Qt's image classes: about half a second when idle.
START_TIMEOUT_S = 60.0
# Starts that fail in a row (not kills after a timeout) before formulas are shown as source
# for the rest of the session, rather than trying again for each one.
MAX_FAILED_STARTS = 3
# Bytes read from the reply pipe per notification: a large image arrives over a few passes.
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class TooSlow:
    """A formula whose layout ran past its time (the child laying it out was killed)."""

    seconds: float


# The image; None: the formula cannot be laid out or drawn; TooSlow: it ran past its time.
Drawn = MathImage | None | TooSlow


def interpreter() -> list[str]:
    """What runs `-c LAYOUT_CODE`: Python, or the packaged app's launcher (sys.executable)."""
    return [sys.executable]


class _Child:
    def __init__(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        argv = [*interpreter(), "-c", LAYOUT_CODE]
        argv += ["--requests", str(request_read), "--replies", str(reply_write)]
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(request_read, reply_write),
            )
        except OSError:
            for fd in (request_write, reply_read):
                os.close(fd)
            raise
        finally:
            for fd in (request_read, reply_write):
                os.close(fd)  # the child's ends; holding them would hide its death
        self.requests = request_write
        self.replies = reply_read

    def send(self, tex: str, display: bool, style: MathStyle) -> None:
        request = [tex, display, *dataclasses.astuple(style)]
        # One formula at a time, so the pipe is empty and this small write never waits.
        write_frame(self.requests, json.dumps(request).encode("utf-8"))

    def kill(self) -> None:
        if self.requests < 0:
            return  # already done
        for fd in (self.requests, self.replies):
            os.close(fd)
        self.requests = self.replies = -1
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _decode(reply: bytes, style: MathStyle) -> MathImage | None:
    if not reply.startswith(IMAGE):
        return None
    try:
        return from_bytes(memoryview(reply)[1:], style.device_pixel_ratio)
    except ValueError as error:
        log.warning("a formula image from the layout process was not usable (%s)", error)
        return None


class LayoutService(QObject):
    """The layout child, driven from the GUI thread. `lay_out` one formula at a time (when
    `idle()`); `finished(tag, drawn)` is called on the GUI thread, never from inside
    `lay_out`."""

    def __init__(
        self, finished: Callable[[Any, Drawn], None], timeout_s: float = FORMULA_TIMEOUT_S
    ) -> None:
        super().__init__()
        self._finished = finished
        self.timeout_s = timeout_s
        self.starts = 0  # children started (the tests count restarts)
        self._child: _Child | None = None
        self._notifier: QSocketNotifier | None = None
        self._ready = False
        self._buffer = bytearray()
        self._failed_starts = 0
        self._current: tuple[Any, str, bool, MathStyle] | None = None
        self._resent = False  # the current formula was sent again to a fresh child
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._out_of_time)

    def idle(self) -> bool:
        return self._current is None

    def ready(self) -> bool:
        """A child is up and has loaded ziamath."""
        return self._ready

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        return self._child.process.pid if self._child is not None else None

    def warm_up(self) -> None:
        """Start the child now, so that the first formula does not wait for it."""
        if self._child is None and self._failed_starts < MAX_FAILED_STARTS:
            self._start()

    def lay_out(self, tag: Any, tex: str, display: bool, style: MathStyle) -> None:
        assert self._current is None, "one formula at a time"
        self._current = (tag, tex, display, style)
        self._resent = False
        if self._child is None and not self._start():
            QTimer.singleShot(0, lambda: self._finish(None))
        elif self._ready:
            self._send()
        # else: sent once the child says it is ready

    def close(self) -> None:
        self._timer.stop()
        self._drop_child()

    # -- inside --------------------------------------------------------------------------------

    def _start(self) -> bool:
        if self._failed_starts >= MAX_FAILED_STARTS:
            return False
        try:
            child = _Child()
        except OSError as error:
            self._start_failed(str(error))
            return False
        self.starts += 1
        self._child = child
        self._ready = False
        self._buffer.clear()
        flags = fcntl.fcntl(child.replies, fcntl.F_GETFL)
        fcntl.fcntl(child.replies, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self._notifier = QSocketNotifier(child.replies, QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._readable)
        self._timer.start(int(START_TIMEOUT_S * 1000))
        return True

    def _send(self) -> None:
        assert self._child is not None and self._current is not None
        _, tex, display, style = self._current
        try:
            self._child.send(tex, display, style)
        except OSError as error:
            self._child_ended(f"it could not be written to ({error})")
            return
        self._timer.start(int(self.timeout_s * 1000))

    def _readable(self, *_args: object) -> None:
        child = self._child
        if child is None:
            return
        try:
            chunk = os.read(child.replies, _READ_CHUNK)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            chunk = b""
        if not chunk:
            self._child_ended(f"exit status {child.process.poll()}")
            return
        self._buffer += chunk
        while len(self._buffer) >= FRAME.size:
            size = FRAME.unpack_from(self._buffer)[0]
            if size > MAX_IMAGE_BYTES:
                self._child_ended(f"a reply of {size} bytes")
                return
            if len(self._buffer) < FRAME.size + size:
                break
            reply = bytes(self._buffer[FRAME.size : FRAME.size + size])
            del self._buffer[: FRAME.size + size]
            self._reply(reply)
            if self._child is not child:
                return

    def _reply(self, reply: bytes) -> None:
        self._timer.stop()
        if not self._ready:
            if reply != READY:
                self._child_ended("it did not start as expected")
                return
            self._ready = True
            self._failed_starts = 0
            if self._current is not None:
                self._send()
            return
        if self._current is None:
            return
        self._finish(_decode(reply, self._current[3]))

    def _out_of_time(self) -> None:
        if not self._ready:
            self._child_ended(f"it did not start within {START_TIMEOUT_S:.0f} s")
            return
        if self._current is not None:
            log.info("formula layout ran past %.1f s: %r", self.timeout_s, self._current[1][:200])
        self._drop_child()
        self._finish(TooSlow(self.timeout_s))

    def _child_ended(self, reason: str) -> None:
        if not self._ready:
            self._start_failed(reason)
        else:
            log.warning("the formula layout process ended (%s)", reason)
        self._drop_child()
        if self._ready_for_retry():
            return
        self._finish(None)

    def _ready_for_retry(self) -> bool:
        """A child that ended between two formulas (killed from outside, say) is not the fault
        of the formula sent to it: that one goes once more, to a fresh child."""
        if self._current is None or self._resent or self._failed_starts:
            return False
        self._resent = True
        return self._start()

    def _start_failed(self, reason: str) -> None:
        self._failed_starts += 1
        log.warning("the formula layout process could not start (%s)", reason)

    def _finish(self, drawn: Drawn) -> None:
        if self._current is None:
            return
        tag = self._current[0]
        self._current = None
        self._finished(tag, drawn)

    def _drop_child(self) -> None:
        self._timer.stop()
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
            self._notifier = None
        if self._child is not None:
            self._child.kill()
            self._child = None
        self._ready = False
        self._buffer.clear()


class LayoutProcess:
    """The layout child asked and waited for: for code that may block (not the GUI thread)."""

    def __init__(self, timeout_s: float = FORMULA_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._child: _Child | None = None

    def draw(self, tex: str, display: bool, style: MathStyle) -> Drawn:
        child = self._child or self._start()
        try:
            child.send(tex, display, style)
            if not _wait_readable(child.replies, self.timeout_s):
                self.close()
                return TooSlow(self.timeout_s)
            return _decode(read_frame(child.replies, MAX_IMAGE_BYTES), style)
        except (EOFError, OSError):
            self.close()
            return None

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None

    def _start(self) -> _Child:
        child = _Child()
        if not _wait_readable(child.replies, START_TIMEOUT_S):
            child.kill()
            raise OSError("the formula layout process did not start")
        try:
            if read_frame(child.replies, len(READY)) != READY:
                raise EOFError
        except (EOFError, OSError):
            child.kill()
            raise OSError("the formula layout process did not start") from None
        self._child = child
        # A caller that forgets close() does not leave the child running until the app exits.
        weakref.finalize(self, child.kill)
        return child


def _wait_readable(fd: int, timeout_s: float) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout_s)
    return bool(readable)
