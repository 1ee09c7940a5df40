"""A stand-in OpenAI-compatible server on 127.0.0.1 that replays scripted streams.

The wire formats are those vLLM and llama.cpp's server document: `data: {json}` events in HTTP/1.1
chunked encoding, reasoning in `delta.reasoning_content` (or vLLM's newer `delta.reasoning`),
a usage chunk at the end when asked for, then `data: [DONE]`. A script can also stall, fail with a
status, or cut the connection in the middle of a stream.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FATHOM_REPO = "FractalAIResearch/Fathom-R1-14B"


class Reply(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    # -- what a script uses --------------------------------------------------------------------

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def event(self, body: Any) -> None:
        payload = body if isinstance(body, str) else json.dumps(body)
        self._chunk(f"data: {payload}\n\n".encode())

    def end_events(self) -> None:
        self.event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def cut(self) -> None:
        """Drop the connection mid-stream, as a crashed server or a broken network does."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def client_left(self, within_s: float) -> bool:
        """True when the client closes its side within `within_s` seconds."""
        self.connection.settimeout(within_s)
        try:
            return self.connection.recv(1) == b""
        except (TimeoutError, OSError):
            return False

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -- routing -------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        replay = self.server.replay
        if self.path.rstrip("/") == "/v1/models":
            if replay.models_html:
                page = b"<html><body>a web page</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
            elif replay.models_status != 200:
                self.send_json(replay.models_status, {"error": {"message": "Invalid API key"}})
                return
            self.send_json(200, {"object": "list", "data": [replay.model_entry()]})
        else:
            self.send_json(404, {"error": {"message": "Not Found"}})

    def do_POST(self) -> None:  # noqa: N802
        replay = self.server.replay
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with replay.lock:
            index = len(replay.requests)
            replay.requests.append(body)
            replay.in_flight += 1
            replay.max_in_flight = max(replay.max_in_flight, replay.in_flight)
        try:
            replay.script(self, body, index)
        finally:
            with replay.lock:
                replay.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    replay: ReplayServer


@dataclass
class ReplayServer:
    owned_by: str = "vllm"
    model: str = FATHOM_REPO
    script: Callable[[Reply, dict, int], None] = lambda reply, body, index: None
    models_status: int = 200
    models_html: bool = False  # answer /v1/models with a web page, as a wrong URL might
    requests: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def model_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.model,
            "object": "model",
            "created": 1,
            "owned_by": self.owned_by,
        }
        if self.owned_by == "vllm":
            entry.update(root=self.model, parent=None, max_model_len=16384)
        elif self.owned_by == "llamacpp":
            entry["meta"] = {"vocab_type": 2, "n_vocab": 152064, "n_ctx_train": 131072}
        return entry


@contextmanager
def replay_server(**options: Any) -> Iterator[ReplayServer]:
    replay = ReplayServer(**options)
    server = _Server(("127.0.0.1", 0), Reply)
    server.replay = replay
    replay.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield replay
    finally:
        server.shutdown()
        server.server_close()


# -- the two servers' documented chunk shapes ------------------------------------------------


def vllm_chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict:
    return {
        "id": "chatcmpl-0",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": FATHOM_REPO,
        "choices": [
            {
                "index": index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        ],
    }


def vllm_usage(prompt: int, completion: int, reasoning: int | None = None) -> dict:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return {
        "id": "chatcmpl-0",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": FATHOM_REPO,
        "choices": [],
        "usage": usage,
    }


def llamacpp_chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
    body: dict[str, Any] = {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": 1,
        "id": "chatcmpl-abc",
        "model": "Fathom-R1-14B-Q4_K_M.gguf",
        "system_fingerprint": "b6500-0a1b2c3",
        "object": "chat.completion.chunk",
    }
    if usage is not None:
        body["usage"] = usage
        body["timings"] = {
            "prompt_n": usage["prompt_tokens"],
            "predicted_n": usage["completion_tokens"],
        }
    return body


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream_vllm(
    reply: Reply,
    reasoning: str,
    answer: str,
    *,
    field_name: str = "reasoning_content",
    delay_s: float = 0.0,
) -> None:
    reply.start_events()
    reply.event(vllm_chunk({"role": "assistant", "content": ""}))
    for piece in pieces(reasoning):
        reply.event(vllm_chunk({field_name: piece}))
        time.sleep(delay_s)
    for piece in pieces(f"\n\n{answer}"):
        reply.event(vllm_chunk({"content": piece}))
        time.sleep(delay_s)
    reply.event(vllm_chunk({"content": ""}, finish="stop"))
    reply.event(
        vllm_usage(prompt=31, completion=len(pieces(reasoning)) + len(pieces(f"\n\n{answer}")))
    )
    reply.end_events()
