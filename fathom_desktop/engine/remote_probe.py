"""What Settings' Test connection finds out about a server, in one line.

It lists the server's models, recognises the kind of server (so which of the app's features it
carries: "Answer now" needs a prefilled assistant turn, consensus in one request needs n > 1), and
asks for a few tokens to see where the server puts the reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2

from fathom_desktop.engine.remote import RemoteEngine
from fathom_desktop.engine.remote_server import (
    CONNECT_TIMEOUT_S,
    KINDS,
    UNKNOWN_KIND,
    RemoteEndpoint,
    RemoteError,
    ServerKind,
    check_response,
    describe_failure,
)

PROBE_TOKENS = 16
PROBE_TIMEOUT_S = 60.0  # a model that is still loading its weights answers slowly


@dataclass(frozen=True)
class ProbeResult:
    models: tuple[str, ...]
    model: str  # the one the app will use
    kind: ServerKind
    reasoning: str  # where the reasoning came, in words

    def line(self) -> str:
        shown = ", ".join(self.models[:3]) + (" …" if len(self.models) > 3 else "")
        count = f"{len(self.models)} model{'' if len(self.models) == 1 else 's'}"
        answer_now = "yes" if self.kind.prefill else "no (it cannot continue a started reply)"
        consensus = "one request (n > 1)" if self.kind.n_choices else "K separate requests"
        return (
            f"Reachable: {self.kind.name}, {count} ({shown}); reasoning {self.reasoning}; "
            f"Answer now: {answer_now}; consensus: {consensus}."
        )


def list_models(endpoint: RemoteEndpoint) -> list[str]:
    """The ids the server lists at /v1/models; RemoteError (one line) when it cannot."""
    with _client(endpoint) as client:
        body = _get_json(client, endpoint, "/models")
    data = body.get("data") if isinstance(body, dict) else None
    models = [str(m["id"]) for m in data or [] if isinstance(m, dict) and "id" in m]
    if not models:
        raise RemoteError(f"{endpoint.base} lists no models.")
    return models


def probe(endpoint: RemoteEndpoint) -> ProbeResult:
    """Connect as the app will, then ask for a few tokens; RemoteError (one line) on failure."""
    engine = RemoteEngine(endpoint)
    try:
        report = engine.load()
        model = str(report.model_path)
        kind = engine.kind
    finally:
        engine.close()
    models = list_models(endpoint)
    with _client(endpoint) as client:
        reasoning = _where_reasoning_goes(client, endpoint, model)
    return ProbeResult(tuple(models), model, kind if kind is not None else UNKNOWN_KIND, reasoning)


def _client(endpoint: RemoteEndpoint) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    return httpx2.Client(
        headers=headers, timeout=httpx2.Timeout(PROBE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    )


def _get_json(client: httpx2.Client, endpoint: RemoteEndpoint, path: str) -> object:
    try:
        response = client.get(endpoint.base + path)
    except httpx2.TransportError as error:
        raise RemoteError(describe_failure(error, endpoint)) from None
    check_response(response, endpoint.model)
    try:
        return response.json()
    except ValueError:
        raise RemoteError(
            f"{response.request.url} did not answer with JSON; is this an OpenAI-compatible API "
            "(its URL usually ends in /v1)?"
        ) from None


def _where_reasoning_goes(client: httpx2.Client, endpoint: RemoteEndpoint, model: str) -> str:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "max_tokens": PROBE_TOKENS,
        "stream": True,
        "temperature": 0.0,
    }
    fields: set[str] = set()
    text: list[str] = []
    try:
        with client.stream("POST", endpoint.base + "/chat/completions", json=payload) as response:
            if response.status_code >= 400:
                response.read()
                check_response(response, model)
            for sse in httpx2.EventSource(response):
                if sse.data.strip() == "[DONE]":
                    break
                try:
                    data = sse.json()
                except ValueError:
                    continue
                for choice in (data.get("choices") if isinstance(data, dict) else None) or []:
                    delta = choice.get("delta") or {}
                    fields.update(k for k in ("reasoning_content", "reasoning") if delta.get(k))
                    text.append(str(delta.get("content") or ""))
    except httpx2.TransportError as error:
        raise RemoteError(describe_failure(error, endpoint)) from None
    except httpx2.SSEError as error:
        raise RemoteError(f"The server did not answer with an event stream ({error}).") from None
    content = "".join(text)
    if fields:
        return "in " + " and ".join(f"`{f}`" for f in sorted(fields))
    if "<think>" in content or "</think>" in content:
        return "as <think> tags in the text"
    if content.strip():
        return "in the text (the chat template opens <think>)"
    return "not seen in its first tokens"


__all__ = ["KINDS", "ProbeResult", "RemoteError", "list_models", "probe"]
