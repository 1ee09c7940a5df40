"""llama-cpp-python's own OpenAI-compatible server as fathom-chat's remote engine.

Same GGUF, greedy: `fathom-chat --server` must give the reasoning and answer the local engine
gives, and the same JSON shape.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from fathom_desktop import chat_cli
from fathom_desktop.demo import SELF_TEST_ANSWER, SELF_TEST_QUESTION

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_cpp_server(demo_gguf: Path) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(demo_gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--n_threads",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx2.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama_cpp.server did not start: {process.stderr.read()[-2000:]!r}"
                )
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _chat(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert (
        chat_cli.main([*argv, "--prompt", SELF_TEST_QUESTION, "--temperature", "0", "--json"]) == 0
    )
    return json.loads(capsys.readouterr().out)


def test_fathom_chat_against_llama_cpp_server_matches_the_local_engine(
    llama_cpp_server: str, demo_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = _chat(["--server", llama_cpp_server], capsys)
    local = _chat(["--model", str(demo_gguf), "--n-ctx", "1024", "--threads", "2"], capsys)
    assert set(remote) == set(local)
    assert remote["reasoning"] == local["reasoning"] and remote["reasoning"]
    assert remote["answer"] == local["answer"]
    assert remote["boxed"] == local["boxed"] == SELF_TEST_ANSWER
    assert remote["finish_reason"] == local["finish_reason"] == "stop"
    # llama-cpp-python streams one token per chunk: the counts agree with the local engine's.
    for count in ("reasoning_tokens", "answer_tokens"):
        assert remote["stats"][count] == local["stats"][count]
