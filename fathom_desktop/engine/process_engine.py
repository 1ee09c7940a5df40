"""ProcessEngine: the ChatEngine the window uses, with llama.cpp in a child process.

The engine itself (by default `LlamaEngine`) runs in the engine host (engine/host.py); this
client speaks to it over two pipes and never imports `llama_cpp`, so when llama.cpp takes its
process down (a ggml abort on a CUDA error, a segfault, the OOM killer) the window survives: the
stream or the load that was running raises `EngineCrashedError` naming the signal and llama.cpp's
last error line, every delta already delivered stays delivered, and the next `load` starts a fresh
host.

Why a subprocess speaking a small framed protocol rather than multiprocessing's "spawn":
- spawn re-imports the parent's `__main__` in the child, which for the app means PySide6 and the
  window; `python -c CHILD_CODE` imports the engine and nothing else;
- the child's stdout and stderr, where ggml writes its last words before an abort, come back
  through a pipe this client drains as it goes, so the error line survives the crash;
- the exit status names the signal; there is no manager process or pickling of live objects,
  and messages are built-in values only (host_protocol.py), so nothing the child says can make
  this process import anything.

Not thread-safe, like every ChatEngine: one worker thread owns it. The exception is the
GenerationControl of a running request, which any thread may set; this client forwards Stop and
Answer now to the host within `_POLL_S`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from fathom_desktop.engine import host_protocol as wire
from fathom_desktop.engine.consensus import ConsensusResult
from fathom_desktop.engine.errors import EngineCrashedError, EngineError, ModelNotLoadedError
from fathom_desktop.engine.host import CHILD_CODE
from fathom_desktop.engine.types import (
    ChatMessage,
    GenerationControl,
    LoadOptions,
    LoadReport,
    SamplingParams,
    StreamEvent,
)

DEFAULT_FACTORY = "fathom_desktop.engine.llama_engine:LlamaEngine"
# The window's: consensus samples reported side by side as they decode (one lane each).
SIDE_BY_SIDE_FACTORY = "fathom_desktop.engine.llama_engine:side_by_side_engine"
# How often a waiting client looks at Stop / Answer now (and at whether the host still lives).
_POLL_S = 0.02
# How long close() lets the host free its model before it is killed.
_SHUTDOWN_TIMEOUT_S = 10.0
# ggml_abort's own line, written straight to stderr: "ggml-cuda.cu:88: CUDA error".
_ABORT_LINE = re.compile(r"^\S+\.\w+:\d+: \S")
_GPU_MEMORY_WORDS = (
    "out of memory",
    "cudamalloc failed",
    "cuda_error_out_of_memory",
    "erroroutofdevicememory",
    "failed to allocate cuda",
)


class _Host:
    """One running host process: its pipes, its log and how it ended."""

    def __init__(self, factory: str) -> None:
        request_read, request_write = os.pipe()
        event_read, event_write = os.pipe()
        log_read, log_write = os.pipe()
        env = dict(os.environ)
        # ggml's abort would otherwise try to attach a debugger for a backtrace.
        env.setdefault("GGML_NO_BACKTRACE", "1")
        argv = [
            sys.executable,
            "-c",
            CHILD_CODE,
            "--factory",
            factory,
            "--requests",
            str(request_read),
            "--events",
            str(event_write),
        ]
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_write,
                stderr=log_write,
                pass_fds=(request_read, event_write),
                env=env,
            )
        except OSError as error:
            for fd in (request_write, event_read, log_read):
                os.close(fd)
            raise EngineError(f"The engine process could not start ({error}).") from None
        finally:
            for fd in (request_read, event_write, log_write):
                os.close(fd)  # the child's ends; holding them would hide its death
        self.requests = Connection(request_write, readable=False)
        self.events = Connection(event_read, writable=False)
        # The host's last lines, numbered, so that a failure is explained by its own request's.
        self.log_lines: deque[tuple[int, str]] = deque(maxlen=50)
        self._lines_read = 0
        self._request_mark = 0
        self._log_reader = threading.Thread(
            target=self._read_log, args=(log_read,), name="engine-host-log", daemon=True
        )
        self._log_reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, *message: Any) -> None:
        if message[0] not in wire.CONTROLS:
            self._request_mark = self._lines_read
        self.requests.send_bytes(wire.dumps(message))

    def _read_log(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if not line.strip():
                    continue
                self.log_lines.append((self._lines_read, line))
                self._lines_read += 1

    def wait_log(self) -> None:
        """After the host ended: let the log reader take the last lines it wrote."""
        self._log_reader.join(timeout=2.0)

    def _request_lines(self) -> list[str]:
        return [line for number, line in self.log_lines if number >= self._request_mark]

    def last_error(self) -> str | None:
        """llama.cpp's last error line in this request: the head of its last error report (the
        indented lines after a head are details), else ggml's abort message, else nothing."""
        abort_line: str | None = None
        for distance, line in enumerate(reversed(self._request_lines())):
            if line.startswith(wire.LOG_ERROR_PREFIX):
                message = line[len(wire.LOG_ERROR_PREFIX) :]
                if message and not message[0].isspace():
                    return message.strip()
            elif abort_line is None and _ABORT_LINE.match(line):
                abort_line = line.strip()
            if abort_line is not None and distance > 8:
                break  # the abort's own report, if any, is just above it
        return abort_line

    def gpu_memory_failure(self) -> bool:
        recent = self._request_lines()[-8:]
        return any(word in line.lower() for line in recent for word in _GPU_MEMORY_WORDS)

    def stop(self, timeout: float) -> None:
        """Ask the host to free its model and exit; kill it if it does not."""
        if self.alive():
            with contextlib.suppress(OSError):
                self.send(wire.SHUTDOWN)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.requests.close()
        self.events.close()
        self.wait_log()


@dataclass
class _Pending:
    """A request whose reply the host is still sending."""

    host: _Host
    control: GenerationControl
    stream: Generator[StreamEvent, None, None] | None = None
    answered: bool = False  # its final OK / ERROR was read (or the host died)


class ProcessEngine:
    """ChatEngine whose engine runs in a child process (see the module docstring).

    `factory` is "module:callable" making the engine in the child; the child starts in the
    background when this object is made, so the first `load` finds it ready.
    """

    def __init__(self, factory: str = DEFAULT_FACTORY) -> None:
        self._factory = factory
        self._host: _Host | None = _Host(factory)
        self._loaded: LoadReport | None = None
        self._pending: _Pending | None = None  # the request whose reply is being read

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def loaded(self) -> LoadReport | None:
        return self._loaded

    @property
    def pid(self) -> int | None:
        """The engine host's process id (None when none runs)."""
        return self._host.pid if self._host is not None else None

    def load(self, options: LoadOptions) -> LoadReport:
        """Load in a host of its own: a model already loaded goes with its process first, so
        all its memory is free before the new one is read (reload with fewer GPU layers is this
        call with a smaller `n_gpu_layers`)."""
        self._settle()
        if self._loaded is not None or (self._host is not None and not self._host.alive()):
            self.close()
        if self._host is None:
            self._host = _Host(self._factory)
        report = self._request(wire.LOAD, options, while_loading=True)
        self._loaded = report
        return report

    def close(self) -> None:
        """End the host and with it everything it held; the next `load` starts a new one."""
        self._settle()
        self._loaded = None
        host, self._host = self._host, None
        if host is not None:
            host.stop(_SHUTDOWN_TIMEOUT_S)

    def count_tokens(self, text: str) -> int:
        self._require_loaded()
        return int(self._request(wire.COUNT_TOKENS, text))

    # -- generation ------------------------------------------------------------------------

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        """Errors in the request raise here, as in LlamaEngine; then the events stream."""
        self._require_loaded()
        self._settle()
        control = control or GenerationControl()
        host = self._live_host()
        self._send(host, wire.GENERATE, messages, sampling)
        reply = self._receive(host, control)
        if reply[0] == wire.ERROR:
            raise wire.decode_error(reply[1], reply[2])
        pending = _Pending(host, control)
        pending.stream = self._stream(pending)
        self._pending = pending
        return pending.stream

    def consensus(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl | None = None,
        on_event: Callable[[int, StreamEvent], None] | None = None,
        *,
        parallel: int | None = None,
    ) -> ConsensusResult:
        """The host runs the engine's consensus; `on_event` is called here, on this thread."""
        self._require_loaded()
        self._settle()
        control = control or GenerationControl()
        host = self._live_host()
        self._send(host, wire.CONSENSUS, messages, sampling, k, parallel)
        pending = self._pending = _Pending(host, control)
        try:
            while True:
                reply = self._receive(host, control)
                if reply[0] == wire.SAMPLE_EVENT:
                    if on_event is not None:
                        on_event(reply[1], wire.decode(reply[2]))
                    continue
                pending.answered = True
                if reply[0] == wire.OK:
                    return wire.decode(reply[1])
                raise wire.decode_error(reply[1], reply[2])
        except EngineCrashedError:
            pending.answered = True
            raise
        finally:
            self._settle()  # when on_event raised: stop the host and clear the pipe

    def _stream(self, pending: _Pending) -> Generator[StreamEvent, None, None]:
        try:
            while True:
                reply = self._receive(pending.host, pending.control)
                if reply[0] == wire.EVENT:
                    yield wire.decode(reply[1])
                    continue
                pending.answered = True
                if reply[0] == wire.OK:
                    return
                raise wire.decode_error(reply[1], reply[2])
        except EngineCrashedError:
            pending.answered = True
            raise
        finally:
            self._drain(pending)  # closed early: stop the host now, not at the next request

    def _settle(self) -> None:
        """Before the next request: a reply left unread (a stream the caller dropped or never
        started) is stopped in the host and its rest taken off the pipe, so the next request
        reads its own answer."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.stream is not None:
            pending.stream.close()
        self._drain(pending)  # a stream never started, or a consensus left by an exception

    def _drain(self, pending: _Pending) -> None:
        if pending.answered or not pending.host.alive():
            return
        pending.control.cancel.set()
        try:
            while self._receive(pending.host, pending.control)[0] not in (wire.OK, wire.ERROR):
                pass
        except EngineCrashedError:
            pass  # the next request finds no engine and says so
        pending.answered = True

    # -- the pipe --------------------------------------------------------------------------

    def _require_loaded(self) -> None:
        if self._loaded is None:
            raise ModelNotLoadedError("No model is loaded; load a GGUF model first.")

    def _live_host(self) -> _Host:
        host = self._host
        if host is None or not host.alive():
            # The host died between requests: report it as this request's failure.
            raise self._crashed(host, while_loading=False)
        return host

    def _request(self, op: str, *args: Any, while_loading: bool = False) -> Any:
        self._settle()
        host = self._host
        assert host is not None
        self._send(host, op, *args, while_loading=while_loading)
        reply = self._receive(host, None, while_loading=while_loading)
        if reply[0] == wire.ERROR:
            raise wire.decode_error(reply[1], reply[2])
        return wire.decode(reply[1])

    def _send(self, host: _Host, op: str, *args: Any, while_loading: bool = False) -> None:
        try:
            host.send(op, *(wire.encode(arg) for arg in args))
        except OSError:
            raise self._crashed(host, while_loading=while_loading) from None

    def _receive(
        self, host: _Host, control: GenerationControl | None, *, while_loading: bool = False
    ) -> tuple[Any, ...]:
        """The next message from the host, forwarding Stop / Answer now while waiting."""
        forwarded: set[str] = set()
        while True:
            if control is not None:
                for op, event in (
                    (wire.CANCEL, control.cancel),
                    (wire.ANSWER_NOW, control.answer_now),
                ):
                    if op not in forwarded and event.is_set():
                        forwarded.add(op)
                        # If the host is gone, the read below says so.
                        with contextlib.suppress(OSError):
                            host.send(op)
            try:
                if host.events.poll(_POLL_S):
                    return wire.loads(host.events.recv_bytes())
            except (EOFError, OSError):
                raise self._crashed(host, while_loading=while_loading) from None

    def _crashed(self, host: _Host | None, *, while_loading: bool) -> EngineCrashedError:
        """Turn the host's death into the error the caller reports; forget the dead host."""
        self._loaded = None
        if host is None:
            return EngineCrashedError("The engine is not running; load the model again.")
        if self._host is host:
            self._host = None
        try:
            host.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait()
        host.wait_log()
        host.requests.close()
        host.events.close()
        return crash_error(
            host.process.returncode,
            host.last_error(),
            gpu_memory=host.gpu_memory_failure(),
            while_loading=while_loading,
        )


def crash_error(
    returncode: int | None, last_error: str | None, *, gpu_memory: bool, while_loading: bool
) -> EngineCrashedError:
    """One line for the user: what ended the engine, while doing what, and llama.cpp's word."""
    signal_name: str | None = None
    exit_code: int | None = None
    if returncode is not None and returncode < 0:
        try:
            signal_name = signal.Signals(-returncode).name
        except ValueError:
            signal_name = f"signal {-returncode}"
        how = f"was killed by {signal_name}"
    else:
        exit_code = returncode
        how = f"exited with code {returncode}"
    doing = "loading the model" if while_loading else "generating"
    said = f": {last_error}" if last_error else " (llama.cpp logged no error)"
    return EngineCrashedError(
        f"The engine process {how} while {doing}{said}.",
        signal_name=signal_name,
        exit_code=exit_code,
        last_error=last_error,
        gpu_memory=gpu_memory,
        while_loading=while_loading,
    )


__all__ = [
    "DEFAULT_FACTORY",
    "SIDE_BY_SIDE_FACTORY",
    "EngineError",
    "ProcessEngine",
    "crash_error",
]
