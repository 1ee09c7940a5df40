"""fathom-serve under test: the real app and engine on the demo model, served on 127.0.0.1.

The server runs in-process (uvicorn in a thread, on a socket bound to a free loopback port), so a
test can reach the engine it serves; one test also starts the `fathom-serve` program itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fathom_desktop.engine.consensus import ConsensusResult, consensus
from fathom_desktop.engine.types import (
    ChatMessage,
    Finished,
    GenerationControl,
    SamplingParams,
    StreamEvent,
    TextDelta,
)

SERVE_N_CTX = 1024


@pytest.fixture(scope="session")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fathom_desktop.demo import ensure_demo_model

    return ensure_demo_model(directory=tmp_path_factory.mktemp("serve-models"))


@pytest.fixture(scope="module")
def demo_engine(demo_gguf: Path) -> Iterator[object]:
    from fathom_desktop.engine import LlamaEngine
    from fathom_desktop.engine.types import LoadOptions

    engine = LlamaEngine()
    engine.load(LoadOptions(demo_gguf, n_ctx=SERVE_N_CTX, n_gpu_layers=0, n_threads=2))
    yield engine
    engine.close()


@dataclass
class PacedEngine:
    """A real engine that pauses after each text delta, and notes what a cancel changed.

    The pause makes a reply last long enough for a client to leave in the middle of it.
    """

    engine: object
    delay_s: float = 0.02
    finished: list[Finished] = field(default_factory=list)
    deltas_after_cancel: list[int] = field(default_factory=list)

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        control = control or GenerationControl()
        stream = self.engine.generate(messages, sampling, control)  # type: ignore[attr-defined]
        return self._paced(stream, control)

    def _paced(self, stream: Iterator[StreamEvent], control: GenerationControl):
        after_cancel: int | None = None
        for event in stream:
            if isinstance(event, TextDelta):
                if after_cancel is not None:
                    after_cancel += 1
                time.sleep(self.delay_s)
            if control.cancel.is_set() and after_cancel is None:
                after_cancel = 0
            if isinstance(event, Finished):
                self.finished.append(event)
                self.deltas_after_cancel.append(after_cancel if after_cancel is not None else -1)
            yield event

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
        return consensus(self, messages, sampling, k, control, on_event)  # type: ignore[arg-type]


@dataclass
class Served:
    base_url: str
    model_id: str
    runner: object

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


@contextmanager
def serve(
    engine: object,
    *,
    api_key: str | None = None,
    max_waiting: int = 8,
    max_body_bytes: int | None = None,
) -> Iterator[Served]:
    """fathom-serve's app over `engine` on a free loopback port, for the `with` block."""
    import uvicorn

    from fathom_desktop.serve.app import DEFAULT_MAX_BODY_BYTES, ServerConfig, create_app
    from fathom_desktop.serve.runner import EngineRunner

    runner = EngineRunner(engine, max_waiting=max_waiting)  # type: ignore[arg-type]
    config = ServerConfig(
        model_id="fathom-tiny-test",
        n_ctx=SERVE_N_CTX,
        api_key=api_key,
        max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(runner, config), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", config.model_id, runner)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runner.close(close_engine=False)  # the engine belongs to the module
        sock.close()


@pytest.fixture(scope="module")
def served(demo_engine: object) -> Iterator[Served]:
    with serve(demo_engine) as server:
        yield server
