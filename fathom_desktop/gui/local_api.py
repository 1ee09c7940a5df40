"""The window's Local API server: started and stopped from Settings, shown in the status bar.

It serves the window's own engine (`EngineChoice.for_server()`), so the model is loaded once and
the window and the server's clients take turns on it (see engine/remote_choice.py). The status
bar shows the server's address while it runs, "busy" while it answers a request, and says so when
a message sent in the window waits for the server's request to finish.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QLabel, QWidget

from fathom_desktop import credentials
from fathom_desktop.engine.remote_choice import EngineChoice, TurnState, User
from fathom_desktop.gui.background import BackgroundJobs
from fathom_desktop.settings import SettingsStore

if TYPE_CHECKING:  # the server's stack loads only when it is turned on
    from fathom_desktop.serve.in_app import InAppServer

log = logging.getLogger(__name__)

# Settings that restart the server when they change (with the key kept in the keyring).
API_SERVER_KEYS = frozenset({"api_server_enabled", "api_server_host", "api_server_port"})
API_KEY_CHANGED = "api_server_key"  # reported among the changed settings when only the key did
WINDOW_WAITS = "Your message waits for the API server's request to finish…"


class _TurnRelay(QObject):
    """Carries turn changes from whichever thread made them to the GUI thread. Parentless: the
    engine may report after the window is gone, and this object must still exist then."""

    changed = Signal(object)  # TurnState


class ApiServerControl(QObject):
    """Runs `InAppServer` as the settings say; `label` is its status-bar widget."""

    problem = Signal(str)  # one line for the window's banner
    status_message = Signal(str)  # a passing note for the status bar

    def __init__(self, engine: EngineChoice, store: SettingsStore, parent: QWidget) -> None:
        super().__init__(parent)
        self._engine = engine
        self._store = store
        self.server: InAppServer | None = None
        self._jobs = BackgroundJobs(self)
        self._stopping: list[threading.Thread] = []
        self._generation = 0  # which apply() a key lookup belongs to
        self.label = QLabel(parent)
        self.label.setObjectName("apiServer")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.hide()
        self._relay = _TurnRelay()
        # Queued: turns change in the model thread and in the server's runner thread.
        self._relay.changed.connect(self._show_turns, Qt.ConnectionType.QueuedConnection)
        relay = self._relay
        engine.turns.listen(lambda state: relay.changed.emit(state))
        self._last_turns = engine.turns.state()

    @property
    def running(self) -> bool:
        return self.server is not None

    def apply(self) -> None:
        """Start, restart or stop the server to match the settings (the key is read off the GUI
        thread, from the keyring)."""
        self._generation += 1
        self._stop_server()
        if not self._store.get("api_server_enabled"):
            self._show_turns(self._last_turns)
            return
        generation = self._generation
        stopping = list(self._stopping)

        def key_once_the_port_is_free() -> str | None:
            for thread in stopping:  # a server being turned off still holds the port
                thread.join()
            return credentials.api_key(credentials.LOCAL_API_SERVER)

        self._jobs.run(
            key_once_the_port_is_free,
            lambda key: self._start(key, generation),
            lambda error: self.problem.emit(f"The API server did not start: {error}"),
        )

    def _start(self, key: object, generation: int) -> None:
        if generation != self._generation:
            return  # the settings changed again meanwhile
        from fathom_desktop.serve.in_app import ApiServerError, InAppServer

        host = str(self._store.get("api_server_host"))
        port = int(self._store.get("api_server_port"))  # type: ignore[arg-type]
        try:
            server = InAppServer(
                self._engine.for_server(),
                host=host,
                port=port,
                api_key=str(key) if key else None,
            )
            server.start()
        except ApiServerError as error:
            self.problem.emit(str(error))
            return
        self.server = server
        self.status_message.emit(f"API server listening at {server.address}")
        self._show_turns(self._engine.turns.state())

    def _stop_server(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        # Joining uvicorn can take its grace period: never on the GUI thread while the app runs.
        thread = threading.Thread(target=server.stop, name="api-server-stop", daemon=True)
        thread.start()
        self._stopping.append(thread)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server and wait for it (the app is closing)."""
        self._generation += 1
        self._jobs.forget()
        server, self.server = self.server, None
        if server is not None:
            server.stop(timeout_s)
        for thread in self._stopping:
            thread.join(timeout_s)
        self._stopping.clear()

    def _show_turns(self, state: TurnState) -> None:
        previous, self._last_turns = self._last_turns, state
        waits, waited = _window_waits(state), _window_waits(previous)
        if waits != waited:
            self.status_message.emit(WINDOW_WAITS if waits else "")
        server = self.server
        if server is None:
            self.label.hide()
            return
        if state.holder is User.API_SERVER:
            more = f", {state.server_waiting} waiting" if state.server_waiting else ""
            text = f"API server busy{more} · {server.address}"
        elif state.server_waiting:
            text = f"API server: {state.server_waiting} waiting · {server.address}"
        else:
            text = f"API server at {server.address}"
        self.label.setText(text)
        self.label.show()


def _window_waits(state: TurnState) -> bool:
    return state.holder is User.API_SERVER and state.window_waiting > 0
