"""The HTTP surface of fathom-serve: OpenAI's chat-completions API over the engine.

Routes: POST /v1/chat/completions (JSON or server-sent events), GET /v1/models, POST /tokenize
(vLLM's shape, so remote clients can count tokens), GET /health. Every failure is OpenAI's error
JSON with its status; a traceback only ever reaches the server's own log.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fathom_desktop.engine.errors import (
    EngineError,
    ModelNotLoadedError,
    PromptTooLongError,
    SettingsError,
)
from fathom_desktop.engine.types import (
    ContextTrimmed,
    DeltaKind,
    Finished,
    GenerationControl,
    TextDelta,
)
from fathom_desktop.serve.protocol import (
    ApiError,
    ChatRequest,
    ReplyIds,
    Usage,
    chunk,
    delta_choice,
    finish_reason,
    message_choice,
    parse_chat_request,
)
from fathom_desktop.serve.runner import EngineRunner, Failed, Generation, Item, SampleEvent
from fathom_desktop.serve.stops import StopMatcher

logger = logging.getLogger("fathom_desktop.serve")

DEFAULT_MAX_BODY_BYTES = 4 * 2**20  # a full 16k-token conversation is well under 1 MiB
OWNED_BY = "fathom-desktop"  # how remote clients recognise this server in /v1/models
# Comments keep proxies and clients from timing out while a long prompt is evaluated.
PING_SECONDS = 15


@dataclass(frozen=True)
class ServerConfig:
    model_id: str
    n_ctx: int
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(
    runner: EngineRunner, config: ServerConfig | Callable[[], ServerConfig]
) -> Starlette:
    """The app; `config` may be a function, asked at every request, where the model served can
    change while the server runs (the app's own server follows the model the window loads)."""
    api = _Api(runner, config)
    routes = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/health", api.health, methods=["GET"]),
    ]
    handlers = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Exception: _unexpected_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]


async def _api_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return await _api_error(_request, ApiError(error.status_code, str(error.detail), type=kind))


async def _unexpected_error(_request: Request, error: Exception) -> Response:
    logger.error("unexpected error", exc_info=error)
    return await _api_error(
        _request,
        ApiError(
            500, "The server failed unexpectedly; its log has the details.", type="server_error"
        ),
    )


def _engine_error(error: BaseException) -> ApiError:
    """How a failure from the engine thread reaches the client."""
    if isinstance(error, ModelNotLoadedError):
        return ApiError(503, "No model is loaded yet; try again once it is.", type="server_error")
    if isinstance(error, PromptTooLongError):
        return ApiError(400, str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, SettingsError | ValueError):
        return ApiError(400, str(error))
    if isinstance(error, ApiError):
        return error
    if isinstance(error, EngineError):
        return ApiError(500, str(error), type="server_error")
    logger.error("generation failed", exc_info=error)
    return ApiError(
        500, "The generation failed; the server's log has the details.", type="server_error"
    )


class _Api:
    def __init__(
        self, runner: EngineRunner, config: ServerConfig | Callable[[], ServerConfig]
    ) -> None:
        self.runner = runner
        self._config = config

    @property
    def config(self) -> ServerConfig:
        return self._config() if callable(self._config) else self._config

    # -- plumbing ------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), key):
            raise ApiError(
                401,
                "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                type="authentication_error",
                code="invalid_api_key",
            )

    async def _json_body(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        too_large = ApiError(
            413,
            f"The request body is larger than this server's limit of {limit:,} bytes.",
            code="request_too_large",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise too_large
        try:
            return json.loads(body)
        except json.JSONDecodeError as error:
            raise ApiError(400, f"The request body is not valid JSON: {error}.") from None
        except UnicodeDecodeError:
            raise ApiError(400, "The request body is not UTF-8 text.") from None

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.model_id:
            raise ApiError(
                404,
                f"The model '{model}' does not exist here; this server runs "
                f"'{self.config.model_id}'.",
                type="not_found_error",
                code="model_not_found",
                param="model",
            )

    # -- routes --------------------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": self.config.model_id,
                "busy": self.runner.busy,
                "waiting": self.runner.waiting,
            }
        )

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        entry = {
            "id": self.config.model_id,
            "object": "model",
            "created": self.config.created,
            "owned_by": OWNED_BY,
            "max_model_len": self.config.n_ctx,
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def tokenize(self, request: Request) -> Response:
        self._authorize(request)
        body = await self._json_body(request)
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ApiError(400, "'prompt' must be a string.", param="prompt")
        self._check_model(body.get("model"))
        count = await self.runner.call(lambda engine: engine.count_tokens(text))
        return JSONResponse({"count": count, "max_model_len": self.config.n_ctx})

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        chat = parse_chat_request(await self._json_body(request))
        self._check_model(chat.model)
        control = GenerationControl()
        watcher = asyncio.create_task(_cancel_on_disconnect(request, control))
        try:
            generation = self.runner.generation(chat, control)
            first = await generation.next_batch()
            _raise_early_failure(first)
        except BaseException:
            watcher.cancel()
            control.cancel.set()
            raise
        ids = ReplyIds(self.config.model_id)
        if chat.stream:
            events = _sse(generation, first, chat, ids, control, watcher)
            return EventSourceResponse(events, ping=PING_SECONDS)
        try:
            return JSONResponse(await _complete(generation, first, chat, ids, control))
        finally:
            watcher.cancel()
            generation.cancel()


async def _cancel_on_disconnect(request: Request, control: GenerationControl) -> None:
    """Cancel the generation (between two tokens) as soon as the client goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            control.cancel.set()
            return


def _raise_early_failure(first: list[Item]) -> None:
    """A failure before any text (a prompt over the context, bad settings) is a proper status."""
    for item in first:
        if isinstance(item, Failed):
            raise _engine_error(item.error)
        if isinstance(item, SampleEvent) and isinstance(item.event, TextDelta):
            return


class _Choice:
    """One choice's progress: the text sent so far and whether a stop sequence ended it."""

    def __init__(self, index: int, chat: ChatRequest, control: GenerationControl) -> None:
        self.index = index
        self._stops = StopMatcher(chat.stop)
        # With one choice a stop sequence ends the generation; with several it only ends what
        # is sent, since the other samples still run (the vote sees each sample's full answer).
        self._control = control if chat.n == 1 else None
        self.started = False
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self.finish: str | None = None

    def on_event(self, event: object) -> list[dict[str, Any]]:
        """Deltas for the client, in order (each a dict for one chunk's `delta`)."""
        deltas: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            deltas.append({"role": "assistant", "content": ""})
        if isinstance(event, TextDelta):
            if event.kind is DeltaKind.REASONING:
                self.reasoning.append(event.text)
                deltas.append({"reasoning_content": event.text})
            else:
                deltas += self._answer(self._stops.feed(event.text))
                if self._stops.stopped and self._control is not None:
                    self._control.cancel.set()
        elif isinstance(event, Finished):
            deltas += self._answer(self._stops.flush())
            self.finish = finish_reason(
                event.stats.finish_reason, stopped_by_sequence=self._stops.stopped
            )
        return deltas

    def _answer(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.answer.append(text)
        return [{"content": text}]


def _merge(pieces: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """Join consecutive text deltas of one choice and one field into a single delta."""
    merged: list[tuple[int, dict[str, Any]]] = []
    for index, delta in pieces:
        if merged and len(delta) == 1 and "role" not in delta:
            last_index, last = merged[-1]
            (key,) = delta
            if last_index == index and list(last) == [key] and key != "role":
                merged[-1] = (index, {key: last[key] + delta[key]})
                continue
        merged.append((index, delta))
    return merged


async def _sse(
    generation: Generation,
    first: list[Item],
    chat: ChatRequest,
    ids: ReplyIds,
    control: GenerationControl,
    watcher: asyncio.Task[None],
) -> AsyncIterator[str]:
    choices: dict[int, _Choice] = {}
    usage = Usage()
    batch = first
    try:
        while batch:
            pieces: list[tuple[int, dict[str, Any]]] = []
            finishes: list[tuple[int, str]] = []
            for item in batch:
                if isinstance(item, Failed):
                    # Headers are gone; OpenAI's clients raise on an `error` event mid-stream.
                    yield json.dumps(_engine_error(item.error).body(), ensure_ascii=False)
                    return
                if not isinstance(item, SampleEvent) or isinstance(item.event, ContextTrimmed):
                    continue
                choice = choices.setdefault(item.index, _Choice(item.index, chat, control))
                pieces += [(item.index, delta) for delta in choice.on_event(item.event)]
                if isinstance(item.event, Finished):
                    usage.add(item.event.stats)
                    finishes.append((item.index, choice.finish or "stop"))
            for index, delta in _merge(pieces):
                yield _dump(chunk(ids, [delta_choice(index, delta)]))
            for index, reason in finishes:
                yield _dump(chunk(ids, [delta_choice(index, {}, reason)]))
            batch = await generation.next_batch()
        if chat.include_usage:
            yield _dump(chunk(ids, [], usage))
        yield "[DONE]"
    finally:
        watcher.cancel()
        generation.cancel()  # a client gone mid-stream stops the engine at the next token


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False)


async def _complete(
    generation: Generation,
    first: list[Item],
    chat: ChatRequest,
    ids: ReplyIds,
    control: GenerationControl,
) -> dict[str, Any]:
    choices: dict[int, _Choice] = {}
    usage = Usage()
    consensus = None
    batch = first
    while batch:
        for item in batch:
            if isinstance(item, Failed):
                raise _engine_error(item.error)
            if isinstance(item, SampleEvent) and not isinstance(item.event, ContextTrimmed):
                choice = choices.setdefault(item.index, _Choice(item.index, chat, control))
                choice.on_event(item.event)
                if isinstance(item.event, Finished):
                    usage.add(item.event.stats)
            elif not isinstance(item, SampleEvent):
                consensus = item.result
        batch = await generation.next_batch()
    body = ids.envelope("chat.completion")
    body["choices"] = [
        message_choice(c.index, "".join(c.reasoning), "".join(c.answer), c.finish or "stop")
        for c in sorted(choices.values(), key=lambda c: c.index)
        if c.finish is not None
    ]
    body["usage"] = usage.body()
    if consensus is not None:
        # An extension: the engine's majority vote over the choices' \boxed{} answers.
        body["consensus"] = {"answer": consensus.answer, "votes": consensus.votes}
    return body
