"""The window's engine: the local model or a remote server, shared in turns with the API server.

`EngineChoice` is the one engine the window's model thread talks to. A load with
`RemoteLoadOptions` makes it a client of an OpenAI-compatible server (`RemoteEngine`); a plain
`LoadOptions` loads the local GGUF as before. The app's own API server (fathom-serve's app over
this same object, through `for_server()`) uses whichever is loaded: one model, one inference path.

The model serves one request at a time. `Turns` hands it out first come, first served: while the
API server answers a request, a message sent in the window waits for it to finish, and a request
that arrives while the window's reply streams waits for that reply. Stop ends the wait. Loads take
a turn too, so a new model never loads under a running request.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from fathom_desktop.engine.consensus import ConsensusResult
from fathom_desktop.engine.errors import EngineError, ModelNotLoadedError
from fathom_desktop.engine.types import (
    ChatEngine,
    ChatMessage,
    Finished,
    FinishReason,
    GenerationControl,
    GenerationStats,
    LoadOptions,
    LoadReport,
    SamplingParams,
    StreamEvent,
)

if TYPE_CHECKING:  # the HTTP client loads only when a server is used
    from fathom_desktop.engine.remote import RemoteEndpoint, RemoteEngine

_WAIT_POLL_S = 0.05  # how often a waiting turn looks at Stop


@dataclass(frozen=True)
class RemoteLoadOptions(LoadOptions):
    """Loading a model served elsewhere means connecting to `endpoint`. `model_path` is only a
    name to show (the server's URL); the local load options do not apply."""

    endpoint: RemoteEndpoint | None = None
    # Looked up when connecting, in the model thread: the keyring may block.
    api_key: Callable[[], str | None] | None = None


class User(StrEnum):
    WINDOW = "window"
    API_SERVER = "API server"


@dataclass(frozen=True)
class TurnState:
    """Who has the model, and who waits for it."""

    holder: User | None
    window_waiting: int
    server_waiting: int


class Turns:
    """A first-come, first-served hold on the model for the window and the API server."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[tuple[object, User]] = deque()
        self._holder: User | None = None
        self._listeners: list[Callable[[TurnState], None]] = []

    def listen(self, listener: Callable[[TurnState], None]) -> None:
        """`listener(state)` after every change, called on the thread that made it."""
        self._listeners.append(listener)

    def state(self) -> TurnState:
        with self._cond:
            return self._state()

    def _state(self) -> TurnState:
        waiting = [user for _, user in self._queue]
        return TurnState(self._holder, waiting.count(User.WINDOW), waiting.count(User.API_SERVER))

    def take(self, user: User, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Wait for the model; False when `cancelled()` became true first."""
        ticket = object()
        with self._cond:
            self._queue.append((ticket, user))
            state = self._state()
        self._tell(state)
        got = False
        with self._cond:
            while self._holder is not None or self._queue[0][0] is not ticket:
                if cancelled():
                    self._queue.remove((ticket, user))
                    self._cond.notify_all()
                    break
                self._cond.wait(_WAIT_POLL_S)
            else:
                self._queue.popleft()
                self._holder = user
                got = True
            state = self._state()
        self._tell(state)
        return got

    def give_back(self) -> None:
        with self._cond:
            self._holder = None
            self._cond.notify_all()
            state = self._state()
        self._tell(state)

    def _tell(self, state: TurnState) -> None:
        for listener in list(self._listeners):
            listener(state)


def _stopped_while_waiting() -> Finished:
    stats = GenerationStats(0, 0, 0, 0.0, 0.0, 0.0, FinishReason.CANCELLED)
    return Finished("", "", stats)


class EngineChoice:
    """A ChatEngine that is the local engine or a remote one, used in turns (see module doc)."""

    def __init__(self, local_factory: Callable[[], ChatEngine]) -> None:
        self._local_factory = local_factory
        self._local: ChatEngine | None = None
        self._remote: RemoteEngine | None = None
        self.turns = Turns()

    # -- which engine ----------------------------------------------------------------------------

    @property
    def remote(self) -> RemoteEngine | None:
        """The remote engine when a server is connected, else None."""
        return self._remote

    def _active(self) -> ChatEngine:
        if self._remote is not None:
            return self._remote
        if self._local is None:
            raise ModelNotLoadedError("No model is loaded yet.")
        return self._local

    @property
    def loaded(self) -> LoadReport | None:
        if self._remote is not None:
            return self._remote.loaded
        return self._local.loaded if self._local is not None else None

    @property
    def answer_now_unsupported_reason(self) -> str | None:
        """Why "Answer now" cannot work with the connected server (None: it can)."""
        remote = self._remote
        return remote.answer_now_unsupported_reason if remote is not None else None

    def load(self, options: LoadOptions) -> LoadReport:
        self.turns.take(User.WINDOW)
        try:
            return self._load(options)
        finally:
            self.turns.give_back()

    def _load(self, options: LoadOptions) -> LoadReport:
        if isinstance(options, RemoteLoadOptions):
            from fathom_desktop.engine.remote import RemoteEngine

            if options.endpoint is None:
                raise EngineError("No server URL is set; enter one in File › Settings.")
            endpoint = options.endpoint
            key = options.api_key() if options.api_key is not None else None
            if key and not endpoint.api_key:
                endpoint = replace(endpoint, api_key=key)
            self._close_all()  # the local model's memory is freed while the server is used
            remote = RemoteEngine(endpoint, interleave_samples=True)
            report = remote.load()
            self._remote = remote
            return report
        self._close_remote()
        if self._local is None:
            self._local = self._local_factory()
        elif self._local.loaded is not None:
            self._local.close()
        return self._local.load(options)

    def _close_remote(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def _close_all(self) -> None:
        self._close_remote()
        if self._local is not None and self._local.loaded is not None:
            self._local.close()

    def close(self) -> None:
        self._close_remote()
        if self._local is not None:
            self._local.close()

    # -- work, in turns --------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return self._count_tokens(User.WINDOW, text)

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        return self._generate(User.WINDOW, messages, sampling, control or GenerationControl())

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
        return self._consensus(
            User.WINDOW, messages, sampling, k, control or GenerationControl(), on_event, parallel
        )

    def for_server(self) -> ChatEngine:
        """This engine as the API server uses it: the same model, in the server's turns."""
        return _ServerView(self)

    def _count_tokens(self, user: User, text: str) -> int:
        self.turns.take(user)
        try:
            return self._active().count_tokens(text)
        finally:
            self.turns.give_back()

    def _generate(
        self,
        user: User,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl,
    ) -> Iterator[StreamEvent]:
        if not self.turns.take(user, control.cancel.is_set):
            yield _stopped_while_waiting()
            return
        try:
            yield from self._active().generate(messages, sampling, control)
        finally:
            self.turns.give_back()

    def _consensus(
        self,
        user: User,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        k: int,
        control: GenerationControl,
        on_event: Callable[[int, StreamEvent], None] | None,
        parallel: int | None,
    ) -> ConsensusResult:
        if not self.turns.take(user, control.cancel.is_set):
            raise EngineError("Stopped while waiting for the model.")
        try:
            return self._active().consensus(
                messages, sampling, k, control, on_event, parallel=parallel
            )
        finally:
            self.turns.give_back()


class _ServerView:
    """EngineChoice for the API server: its requests take the server's turns; it cannot load or
    close the window's model."""

    def __init__(self, choice: EngineChoice) -> None:
        self._choice = choice

    @property
    def loaded(self) -> LoadReport | None:
        return self._choice.loaded

    def load(self, options: LoadOptions) -> LoadReport:
        raise EngineError("The API server uses the model the window has loaded.")

    def close(self) -> None:
        pass  # the window owns the model

    def count_tokens(self, text: str) -> int:
        return self._choice._count_tokens(User.API_SERVER, text)

    def generate(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        control: GenerationControl | None = None,
    ) -> Iterator[StreamEvent]:
        return self._choice._generate(
            User.API_SERVER, messages, sampling, control or GenerationControl()
        )

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
        return self._choice._consensus(
            User.API_SERVER, messages, sampling, k, control or GenerationControl(), on_event,
            parallel,
        )  # fmt: skip
