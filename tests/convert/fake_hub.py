"""A fake Hugging Face Hub on 127.0.0.1, for tests that download without the network.

It serves the endpoints huggingface-hub uses for `model_info` and `hf_hub_download` with
`local_dir` (checked against huggingface-hub 2.4): repo info with file sizes, the tree listing,
and HEAD/GET on `resolve/<commit>/<file>` with Range support. It can cut a transfer short once
(the client must resume it with a Range request), refuse a file (the run fails; a rerun fetches
only the rest) or send a file slowly (so that a test can interrupt it, or watch it progress).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

from convert.download import is_needed

REPO = "FractalAIResearch/Fathom-R1-14B"
SHA = "5e1f0a9c3b7d2e4f6a8b0c1d3e5f7a9b1c2d3e4f"
WEIGHTS = bytes(range(256)) * 2048  # 512 KiB, large enough to be cut mid-transfer


def repo_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"architectures": ["Qwen2ForCausalLM"]}',
        "generation_config.json": b'{"temperature": 0.6}',
        "tokenizer.json": b'{"model": {}}',
        "tokenizer_config.json": b'{"chat_template": ""}',
        "model-00001-of-00002.safetensors": WEIGHTS,
        "model-00002-of-00002.safetensors": WEIGHTS[::-1],
        "model.safetensors.index.json": b'{"weight_map": {}}',
        # What a conversion does not need:
        "README.md": b"# Fathom",
        "pytorch_model.bin": b"pickle" * 1000,
        "figures/accuracy.png": b"\x89PNG",
        "original/model.safetensors": b"nested",
    }


@dataclass
class FakeHub:
    repo_id: str
    files: dict[str, bytes]
    sha: str = SHA
    # file name -> "cut-once" (drop the connection half-way, once), "forbidden" (403) or
    # "slow" (8 KiB every 50 ms)
    faults: dict[str, str] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    url: str = ""

    def oid(self, name: str) -> str:
        return hashlib.sha1(self.files[name]).hexdigest()

    def downloads(self) -> list[str]:
        """Files whose content was requested (GET on resolve/), in order."""
        prefix = f"/{self.repo_id}/resolve/{self.sha}/"
        return [p[len(prefix) :] for m, p, _ in self.log if m == "GET" and p.startswith(prefix)]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, data: object, status: int = 200) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str | None = None) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.log.append((self.command, path, self.headers.get("Range")))
            api = f"/api/models/{hub.repo_id}"
            if path.startswith("/api/models/") and not path.startswith(api):
                return self._error(404, "RepoNotFound")
            if path in (api, f"{api}/revision/main", f"{api}/revision/{hub.sha}"):
                siblings = [
                    {"rfilename": n, "size": len(b), "blobId": hub.oid(n)}
                    for n, b in hub.files.items()
                ]
                return self._json({"id": hub.repo_id, "sha": hub.sha, "siblings": siblings})
            if path.startswith(f"{api}/revision/"):
                return self._error(404, "RevisionNotFound")
            if path.startswith(f"{api}/tree/{hub.sha}"):
                entries = [
                    {"type": "file", "path": n, "size": len(b), "oid": hub.oid(n)}
                    for n, b in hub.files.items()
                ]
                return self._json(entries)
            prefix = f"/{hub.repo_id}/resolve/{hub.sha}/"
            if not path.startswith(prefix) or path[len(prefix) :] not in hub.files:
                return self._error(404, "EntryNotFound")
            name = path[len(prefix) :]
            if hub.faults.get(name) == "forbidden":
                return self._error(403)
            body = hub.files[name]
            start = 0
            if (wanted := self.headers.get("Range")) and wanted.startswith("bytes="):
                start = int(wanted[len("bytes=") :].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.sha)
            self.send_header("ETag", f'"{hub.oid(name)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if head:
                return None
            if hub.faults.get(name) == "cut-once" and not start:
                del hub.faults[name]
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            if hub.faults.get(name) == "slow":
                try:
                    for at in range(start, len(body), 8192):
                        self.wfile.write(body[at : at + 8192])
                        self.wfile.flush()
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away mid-transfer
                return None
            self.wfile.write(body[start:])
            return None

    return Handler


@contextlib.contextmanager
def serve_fake_hub(
    monkeypatch: pytest.MonkeyPatch, repo_id: str, files: dict[str, bytes]
) -> Iterator[FakeHub]:
    """A fake Hub on 127.0.0.1 for the duration; huggingface-hub is let online for it only."""
    import huggingface_hub.constants

    # conftest switches the Hub off for the whole suite; this talks to 127.0.0.1 only.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub(repo_id, files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def needed_bytes(files: dict[str, bytes]) -> int:
    """What a download of `files` transfers: the needed files only."""
    return sum(len(data) for name, data in files.items() if is_needed(name))
