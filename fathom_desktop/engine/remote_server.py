"""What the remote engine knows about a server: where it is, what kind it is, how it failed.

Every failure becomes one line for the user: refused connection, DNS, TLS, timeout, and each HTTP
status a chat server answers with (401/403 key, 404 model, 429 with Retry-After, 5xx).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx2

from fathom_desktop.engine.errors import EngineError, PromptTooLongError

CONNECT_TIMEOUT_S = 10.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is reported rather than waited out


class RemoteError(EngineError):
    """A remote server failed or refused; str() is one line for the user."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RemoteEndpoint:
    url: str  # the API's base, e.g. http://gpu-box:8000/v1 (a missing /v1 is added)
    api_key: str | None = None
    model: str | None = None  # None: the first model the server lists
    read_timeout_s: float = 600.0  # longest silence tolerated (a long prompt being read)
    max_parallel: int = 4  # consensus samples in flight when the server lacks n > 1
    max_retries: int = 2  # for 429 and 503 with Retry-After
    # R1 templates open `<think>` in the prompt, so a reply without any tag is all reasoning.
    template_opens_reasoning: bool = True

    @property
    def base(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/v1") else f"{url}/v1"

    @property
    def root(self) -> str:
        return self.base.removesuffix("/v1")


@dataclass(frozen=True)
class ServerKind:
    """What the server is and which of the app's features it can carry."""

    name: str
    n_choices: bool  # honours n > 1 in one request
    # How "answer now" continues a reply: vLLM's continue_final_message, llama.cpp server's
    # assistant prefill, or None when the server cannot continue an assistant turn.
    prefill: str | None
    tokenize: str | None  # the path of its token-counting endpoint

    @property
    def answer_now_unsupported_reason(self) -> str | None:
        if self.prefill is not None:
            return None
        return f"{self.name} cannot continue a started reply, so the reasoning cannot be cut short"


# Recognised by /v1/models `owned_by`; each server's documented behaviour.
KINDS = {
    "vllm": ServerKind(
        "vLLM", n_choices=True, prefill="continue_final_message", tokenize="/tokenize"
    ),
    "llamacpp": ServerKind(
        "llama.cpp server", n_choices=False, prefill="prefill", tokenize="/tokenize"
    ),
    "me": ServerKind(
        "llama-cpp-python server", n_choices=False, prefill=None, tokenize="/extras/tokenize/count"
    ),
    "fathom-desktop": ServerKind(
        "fathom-serve", n_choices=True, prefill=None, tokenize="/tokenize"
    ),
}
UNKNOWN_KIND = ServerKind("this server", n_choices=False, prefill=None, tokenize=None)


def describe_failure(error: BaseException, endpoint: RemoteEndpoint) -> str:
    """One line for a transport failure: refused, DNS, TLS, timeout, or a cut connection."""
    host = urlsplit(endpoint.base).netloc or endpoint.base
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"Cannot find the server {host}: the name does not resolve (DNS)."
    if any(isinstance(e, ssl.SSLError) for e in chain):
        reason = next(e for e in chain if isinstance(e, ssl.SSLError))
        return f"TLS with {host} failed ({getattr(reason, 'reason', None) or reason})."
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"Connection to {host} refused: is the server running on that port?"
    if isinstance(error, httpx2.ConnectTimeout):
        return f"Timed out connecting to {host} after {CONNECT_TIMEOUT_S:.0f} s."
    if isinstance(error, httpx2.ReadTimeout):
        return f"{host} sent nothing for {endpoint.read_timeout_s:.0f} s; giving up."
    if isinstance(error, httpx2.TimeoutException):
        return f"Timed out talking to {host}."
    return f"Lost the connection to {host} ({error or type(error).__name__})."


def server_message(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or "")[:300]
    return str(error)[:300]


def retry_wait(response: httpx2.Response, attempt: int, max_retries: int) -> float | None:
    """Seconds to wait before trying again (429, or 503 with Retry-After), or None."""
    if response.status_code not in (429, 503) or attempt >= max_retries:
        return None
    header = response.headers.get("retry-after")
    if header is None:
        return None if response.status_code == 503 else 1.0
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER_S else None


def check_response(response: httpx2.Response, model: str | None) -> None:
    """Raise the one-line error a failed status deserves (PromptTooLongError for the context)."""
    status = response.status_code
    if status < 400:
        return
    said = server_message(response)
    detail = f": {said}" if said else "."
    if status in (401, 403):
        message = f"The server refused the API key ({status}){detail}"
    elif status == 404:
        message = (
            f"The server has no model '{model}' (404){detail}"
            if "model" in said.lower()
            else f"No OpenAI-compatible API at {response.request.url} (404)."
        )
    elif status == 429:
        after = response.headers.get("retry-after")
        wait = f" try again in {after} s" if after else " try again later"
        message = f"The server is limiting requests (429);{wait}."
    elif status == 400 and ("context" in said.lower() or "too long" in said.lower()):
        raise PromptTooLongError(f"The server says the prompt is too long{detail}")
    elif status >= 500:
        message = f"The server failed ({status}){detail}"
    else:
        message = f"The server rejected the request ({status}){detail}"
    raise RemoteError(message, status=status)
