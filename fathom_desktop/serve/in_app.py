"""fathom-serve inside the app: the same API over the window's engine, on a background thread.

No second model and no second inference path: the server's runner calls the window's engine
through `EngineChoice.for_server()`, whose turns make the window and the server take the one model
one at a time. uvicorn runs in its own thread with its own event loop; `stop()` asks it to exit,
cancels what it still streams, and joins it.
"""

from __future__ import annotations

import socket
import threading
import time

from fathom_desktop.engine.types import ChatEngine
from fathom_desktop.serve.app import ServerConfig, create_app
from fathom_desktop.serve.cli import DEFAULT_MAX_WAITING, is_loopback
from fathom_desktop.serve.runner import EngineRunner

NO_MODEL_ID = "no-model-loaded"
_GRACE_S = 2  # how long open streams get to end when the server stops


class ApiServerError(Exception):
    """The server cannot start as configured; str() is one line for the user."""


def check_address(host: str, api_key: str | None) -> None:
    """Refuse a public address without a key (anyone who reaches it could use the model)."""
    if not host.strip():
        raise ApiServerError("The API server needs an address to listen on, e.g. 127.0.0.1.")
    if not is_loopback(host) and not api_key:
        raise ApiServerError(
            f"The API server can listen on {host} only with an API key: anyone who can reach "
            "it could use the model. Set a key, or use 127.0.0.1."
        )


class InAppServer:
    def __init__(
        self,
        engine: ChatEngine,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        api_key: str | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        check_address(host, api_key)
        self.host, self.port, self.api_key = host, port, api_key
        self._engine = engine
        self.runner = EngineRunner(engine, max_waiting=max_waiting)
        self._server = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def _config(self) -> ServerConfig:
        report = self._engine.loaded
        return ServerConfig(
            model_id=report.model_path.stem if report is not None else NO_MODEL_ID,
            n_ctx=report.n_ctx if report is not None else 0,
            api_key=self.api_key,
        )

    def start(self) -> None:
        """Bind the port (ApiServerError, one line, when it cannot) and serve in the background."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host.strip("[]"), self.port))
        except OSError as error:
            sock.close()
            reason = error.strerror or str(error)
            raise ApiServerError(
                f"The API server cannot listen on {self.host}:{self.port} ({reason.lower()})."
            ) from None
        self.port = sock.getsockname()[1]  # port 0 picks a free one
        self._socket = sock
        config = uvicorn.Config(
            create_app(self.runner, self._config),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=_GRACE_S,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fathom-api-server", daemon=True
        )
        self._thread.start()

    def wait_started(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._server is not None and not self._server.started:
            if time.monotonic() > deadline or self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.01)
        return self._server is not None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving: requests still streaming are cancelled; the engine stays the window's."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.runner.close(close_engine=False)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
