"""The engine on one worker thread, serving requests one at a time in arrival order.

The engine is stateful and not thread-safe (one model, one KV cache), exactly as in the window:
a single-thread executor owns it, so jobs run strictly in the order they were submitted. The
number of jobs admitted but not finished is bounded; past it a request is refused at once (503)
rather than left waiting behind a queue it cannot see the end of.

Events cross from the worker thread to the event loop through `call_soon_threadsafe`, one O(1)
hand-off per engine event, so a 16k-token reply costs the same per token at its end as at its
start.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from fathom_desktop.engine.consensus import ConsensusResult
from fathom_desktop.engine.types import ChatEngine, GenerationControl, StreamEvent
from fathom_desktop.serve.protocol import ApiError, ChatRequest

logger = logging.getLogger("fathom_desktop.serve")
T = TypeVar("T")


@dataclass(frozen=True)
class SampleEvent:
    index: int  # which choice (consensus sample) the event belongs to
    event: StreamEvent


@dataclass(frozen=True)
class Voted:
    result: ConsensusResult


@dataclass(frozen=True)
class Failed:
    error: BaseException


@dataclass(frozen=True)
class _Done:
    pass


Item = SampleEvent | Voted | Failed


class EngineRunner:
    def __init__(self, engine: ChatEngine, *, max_waiting: int) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fathom-engine")
        self._max_waiting = max_waiting
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._admitted > 0

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - 1)

    def close(self, *, close_engine: bool = True) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if close_engine:
            self.engine.close()

    def run_now(self, job: Callable[[ChatEngine], T]) -> T:
        """Run `job` on the engine thread and wait for it (start-up: loading the model)."""
        return self._executor.submit(job, self.engine).result()

    def _submit(self, job: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            if self._admitted > self._max_waiting:
                raise ApiError(
                    503,
                    f"The server is busy: {self._admitted - 1} requests are already waiting for "
                    "the model. Try again later.",
                    type="server_error",
                    code="server_busy",
                    headers={"Retry-After": "5"},
                )
            self._admitted += 1
        future = self._executor.submit(job)
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: Future[Any]) -> None:
        with self._lock:
            self._admitted -= 1

    async def call(self, job: Callable[[ChatEngine], T]) -> T:
        """Run a short engine job (token counting) in its turn."""
        return await asyncio.wrap_future(self._submit(lambda: job(self.engine)))

    def generation(self, request: ChatRequest, control: GenerationControl) -> Generation:
        """Queue a generation; its events arrive through the returned async iterator."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Item | _Done] = asyncio.Queue()

        def put(item: Item | _Done) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                control.cancel.set()

        def job() -> None:
            try:
                if control.cancel.is_set():
                    return  # the client left while it waited for its turn
                if request.n == 1:
                    stream = self.engine.generate(request.messages, request.sampling, control)
                    for event in stream:
                        put(SampleEvent(0, event))
                else:
                    result = self.engine.consensus(
                        request.messages,
                        request.sampling,
                        request.n,
                        control,
                        lambda index, event: put(SampleEvent(index, event)),
                    )
                    put(Voted(result))
            except BaseException as error:  # reported to the client; the worker lives on
                put(Failed(error))
            finally:
                put(_Done())

        future = self._submit(job)
        return Generation(queue, future, control)


class Generation:
    """The events of one queued generation, in order; cancelling it frees its turn."""

    def __init__(
        self,
        queue: asyncio.Queue[Item | _Done],
        future: Future[Any],
        control: GenerationControl,
    ) -> None:
        self._queue = queue
        self._future = future
        self._control = control
        self._done = False

    def cancel(self) -> None:
        self._control.cancel.set()
        self._future.cancel()  # still waiting: never runs

    async def next_batch(self) -> list[Item]:
        """At least one item (waiting for it), plus every item already queued; [] at the end.

        Taking what has piled up in one go lets a slow client receive fewer, larger chunks
        instead of falling further behind.
        """
        if self._done:
            return []
        items: list[Item] = []
        item = await self._queue.get()
        while True:
            if isinstance(item, _Done):
                self._done = True
                return items
            items.append(item)
            if self._queue.empty():
                return items
            item = self._queue.get_nowait()

    async def items(self) -> AsyncIterator[list[Item]]:
        while batch := await self.next_batch():
            yield batch
