"""The engine host: the child process in which llama.cpp runs for the app.

llama.cpp can end the process it runs in (ggml aborts on a CUDA error, a driver fault segfaults),
so the window keeps it at arm's length: `ProcessEngine` (engine/process_engine.py) starts this
module as a child and talks to it over two pipes, and a crash here costs the app a reload, not
the conversation on screen.

The child serves one request at a time on its main thread. A reader thread takes every message
off the request pipe as it arrives, so Stop and Answer now (`CANCEL`, `ANSWER_NOW`) reach the
running generation at once, between tokens or, through llama.cpp's abort callback, between the
graph computations of a long prompt. When the client goes away (the pipe closes) the child exits
at once, whatever it was doing.

llama.cpp's error lines are written to stderr behind `LOG_ERROR_PREFIX`; the client reads that
stream as it comes, so the last error line is known even when the process dies the next moment.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from fathom_desktop.engine import host_protocol as wire
from fathom_desktop.engine.types import ChatEngine, GenerationControl, StreamEvent

# What the client runs with `python -c`: a fixed line, so a packaged app's launcher can recognise
# it and run the host in place of an interpreter (the launcher has no `-m`).
CHILD_CODE = "import sys; from fathom_desktop.engine.host import main; sys.exit(main(sys.argv[1:]))"


def load_factory(spec: str) -> Callable[[], ChatEngine]:
    """`"package.module:Name"` → the callable that makes the engine."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"An engine factory is 'module:name', not {spec!r}.")
    return getattr(importlib.import_module(module_name), attribute)


class _ErrorLineHandler(logging.Handler):
    """Writes llama.cpp's error lines to stderr, one write each, for the client to read."""

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage().replace("\n", " ")
        os.write(2, f"{wire.LOG_ERROR_PREFIX}{line}\n".encode("utf-8", "replace"))


class Host:
    """Runs requests against one engine and writes the replies to `events`."""

    def __init__(self, factory: str, events: Connection) -> None:
        self._events = events
        self._engine: ChatEngine | None = None
        self._startup_error: BaseException | None = None
        try:
            self._engine = load_factory(factory)()
        except Exception as error:  # reported on the first request, as that request's error
            self._startup_error = error

    def send(self, *message: Any) -> None:
        self._events.send_bytes(wire.dumps(message))

    def handle(self, message: tuple[Any, ...], control: GenerationControl) -> None:
        try:
            if self._engine is None:
                assert self._startup_error is not None
                raise self._startup_error
            self._dispatch(self._engine, message, control)
        except Exception as error:
            self.send(wire.ERROR, *wire.encode_error(error))

    def _dispatch(
        self, engine: ChatEngine, message: tuple[Any, ...], control: GenerationControl
    ) -> None:
        op, args = message[0], [wire.decode(arg) for arg in message[1:]]
        if op == wire.LOAD:
            self.send(wire.OK, wire.encode(engine.load(args[0])))
        elif op == wire.CLOSE:
            engine.close()
            self.send(wire.OK, None)
        elif op == wire.COUNT_TOKENS:
            self.send(wire.OK, engine.count_tokens(args[0]))
        elif op == wire.GENERATE:
            messages, sampling = args
            stream = engine.generate(messages, sampling, control)  # errors raise before STARTED
            self.send(wire.STARTED)
            for event in stream:
                self.send(wire.EVENT, wire.encode(event))
            self.send(wire.OK, None)
        elif op == wire.CONSENSUS:
            messages, sampling, k, parallel = args

            def on_event(sample: int, event: StreamEvent) -> None:
                self.send(wire.SAMPLE_EVENT, sample, wire.encode(event))

            result = engine.consensus(messages, sampling, k, control, on_event, parallel=parallel)
            self.send(wire.OK, wire.encode(result))
        else:
            raise ValueError(f"unknown engine host request {op!r}")

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _read_requests(
    requests: Connection, pending: queue.Queue[tuple[tuple[Any, ...], GenerationControl]]
) -> None:
    """Reader thread: controls act on the newest request at once; requests queue up in order."""
    control = GenerationControl()
    while True:
        try:
            message = wire.loads(requests.recv_bytes())
        except (EOFError, OSError):
            os._exit(0)  # the client is gone: nobody wants what we are computing
        if message[0] == wire.CANCEL:
            control.cancel.set()
        elif message[0] == wire.ANSWER_NOW:
            control.answer_now.set()
        else:
            control = GenerationControl()
            pending.put((message, control))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fathom-engine-host")
    parser.add_argument("--factory", required=True)
    parser.add_argument("--requests", type=int, required=True, help="fd to read requests from")
    parser.add_argument("--events", type=int, required=True, help="fd to write replies to")
    args = parser.parse_args(argv)
    log = logging.getLogger("fathom_desktop.engine.llama_cpp")
    log.addHandler(_ErrorLineHandler(logging.ERROR))
    log.propagate = False
    requests = Connection(args.requests, writable=False)
    events = Connection(args.events, readable=False)
    pending: queue.Queue[tuple[tuple[Any, ...], GenerationControl]] = queue.Queue()
    threading.Thread(
        target=_read_requests, args=(requests, pending), name="requests", daemon=True
    ).start()
    host = Host(args.factory, events)  # imports llama.cpp while the client gets on with start-up
    while True:
        message, control = pending.get()
        if message[0] == wire.SHUTDOWN:
            host.close()
            host.send(wire.OK, None)
            return 0
        host.handle(message, control)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
