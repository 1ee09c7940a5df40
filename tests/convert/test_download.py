"""`download`: tested against a fake Hub on 127.0.0.1, never the network.

The fake serves the endpoints huggingface-hub uses for `model_info` and `hf_hub_download` with
`local_dir` (checked against huggingface-hub 2.4): repo info with file sizes, the tree listing,
and HEAD/GET on `resolve/<commit>/<file>` with Range support. It can cut a transfer short once
(the client must resume it with a Range request), refuse a file (the run fails; a rerun fetches
only the rest) or send a file slowly (so that a test can interrupt it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from convert.download import (
    SOURCE_MARKER,
    download_checkpoint,
    is_needed,
    looks_like_repo_id,
    read_source,
)
from convert.errors import ConversionError
from tests.convert.cli_process import interrupt_cli

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


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with serve_fake_hub(monkeypatch, REPO, repo_files()) as fake:
        yield fake


NEEDED = sorted(n for n in repo_files() if is_needed(n))


def _fetch(hub: FakeHub, dest: Path, **kwargs: object):
    return download_checkpoint(REPO, dest, endpoint=hub.url, show_progress=False, **kwargs)


def test_the_filter_keeps_what_a_conversion_reads() -> None:
    assert NEEDED == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert is_needed("chat_template.jinja")
    assert not is_needed("original/model.safetensors")


def test_repo_ids_and_folders_are_told_apart(tmp_path: Path) -> None:
    assert looks_like_repo_id(REPO)
    assert not looks_like_repo_id("just-a-name")
    assert not looks_like_repo_id(str(tmp_path))


def test_download_fetches_only_the_needed_files_at_one_commit(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "Fathom-R1-14B"
    result = _fetch(hub, dest)
    assert result.source.revision == SHA
    assert result.source.repo_id == REPO
    assert list(result.files) == NEEDED
    assert sorted(hub.downloads()) == NEEDED
    for name in NEEDED:
        assert (dest / name).read_bytes() == hub.files[name]
    assert not (dest / "README.md").exists()
    assert not (dest / "pytorch_model.bin").exists()
    assert result.n_bytes == sum(len(hub.files[n]) for n in NEEDED)
    # Later steps given only the folder still know where it came from.
    assert read_source(dest) == result.source
    assert (dest / SOURCE_MARKER).is_file()


def test_a_cut_transfer_resumes_where_it_stopped(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # huggingface-hub resumes from the last whole chunk it wrote (10 MB); 64 KiB chunks let a
    # 512 KiB test file show the same thing.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 << 10)
    hub.faults["model-00001-of-00002.safetensors"] = "cut-once"
    dest = tmp_path / "ckpt"
    _fetch(hub, dest)
    ranges = [r for m, p, r in hub.log if m == "GET" and p.endswith("00001-of-00002.safetensors")]
    assert ranges == [None, f"bytes={len(WEIGHTS) // 2}-"]
    assert (dest / "model-00001-of-00002.safetensors").read_bytes() == WEIGHTS


def test_a_failed_run_is_finished_by_rerunning_without_refetching(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.faults["model-00002-of-00002.safetensors"] = "forbidden"
    dest = tmp_path / "ckpt"
    with pytest.raises(ConversionError) as err:
        _fetch(hub, dest)
    assert "HTTP 403" in str(err.value) and "\n" not in str(err.value)
    assert read_source(dest) is None  # not marked complete
    assert not (dest / "model-00002-of-00002.safetensors").exists()
    fetched_before = set(hub.downloads())

    del hub.faults["model-00002-of-00002.safetensors"]
    hub.log.clear()
    result = _fetch(hub, dest)
    assert list(result.files) == NEEDED
    # Only what the first run did not finish was fetched again.
    assert "model-00002-of-00002.safetensors" in hub.downloads()
    assert not set(hub.downloads()) & (fetched_before - {"model-00002-of-00002.safetensors"})
    assert (dest / "model-00002-of-00002.safetensors").read_bytes() == WEIGHTS[::-1]


def test_a_finished_download_is_not_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    _fetch(hub, tmp_path / "ckpt")
    hub.log.clear()
    again = _fetch(hub, tmp_path / "ckpt")
    assert again.source.revision == SHA
    assert hub.downloads() == []


def test_an_unknown_repo_or_revision_is_one_clear_line(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="No model repo nobody/nothing"):
        download_checkpoint("nobody/nothing", tmp_path / "x", endpoint=hub.url)
    with pytest.raises(ConversionError, match="has no revision 'v9'"):
        _fetch(hub, tmp_path / "y", revision="v9")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_repo_without_safetensors_is_refused_before_downloading(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.files = {"config.json": b"{}", "pytorch_model.bin": b"pickle"}
    with pytest.raises(ConversionError, match="no safetensors weights"):
        _fetch(hub, tmp_path / "ckpt")
    assert hub.downloads() == []


def test_no_network_is_one_clear_line(hub: FakeHub, tmp_path: Path) -> None:
    # Nothing listens on port 9 of 127.0.0.1 ("discard"): the connection is refused at once.
    with pytest.raises(ConversionError) as err:
        download_checkpoint(REPO, tmp_path / "ckpt", endpoint="http://127.0.0.1:9")
    assert "Cannot reach the Hugging Face Hub" in str(err.value)
    assert "\n" not in str(err.value)


def test_offline_mode_is_one_clear_line(tmp_path: Path) -> None:
    # The suite runs with HF_HUB_OFFLINE=1 (conftest), as a user without network might.
    with pytest.raises(ConversionError) as err:
        download_checkpoint(REPO, tmp_path / "ckpt")
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in str(err.value)
    assert not (tmp_path / "ckpt").exists()


def test_offline_an_earlier_complete_download_is_reused(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    first = _fetch(hub, tmp_path / "ckpt")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    again = download_checkpoint(REPO, tmp_path / "ckpt")
    assert again.source == first.source
    assert list(again.files) == NEEDED


def test_ctrl_c_during_a_download_exits_130_and_leaves_no_partial_file(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.faults["model-00001-of-00002.safetensors"] = "slow"
    dest = tmp_path / "ckpt"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    rc, err = interrupt_cli(
        ["-q", "download", REPO, "--dest", str(dest)],
        when=lambda: bool(list(dest.glob(".cache/**/*.incomplete"))),
        waiting_for="the slow file starting",
        env=env,
    )
    assert rc == 130, err
    assert (
        err.strip().splitlines()[-1] == "fathom-convert: interrupted; no partial output was left."
    )
    assert list(dest.rglob("*.incomplete")) == []
    assert not (dest / "model-00001-of-00002.safetensors").exists()
    assert read_source(dest) is None
