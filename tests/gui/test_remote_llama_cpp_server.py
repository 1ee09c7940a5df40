"""The window against llama-cpp-python's own OpenAI-compatible server, a program nobody here wrote:
same GGUF, greedy, the window shows the reasoning and answer the local engine gives."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from fathom_desktop.demo import SELF_TEST_ANSWER, SELF_TEST_QUESTION
from fathom_desktop.gui.session_types import SessionState
from tests.gui.remote_helpers import free_port

pytestmark = pytest.mark.slow
N_CTX = "1024"


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fathom_desktop.demo import ensure_demo_model

    return ensure_demo_model(directory=tmp_path_factory.mktemp("remote-demo"))


@pytest.fixture(scope="module")
def llama_cpp_server(demo_gguf: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(demo_gguf)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", N_CTX, "--n_threads", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
                raise RuntimeError(f"llama_cpp.server did not start: {process.stderr.read()!r}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _local_reply(demo_gguf: Path) -> dict:
    """fathom-chat on the same file, in its own process (the window's never loads llama.cpp)."""
    argv = [sys.executable, "-m", "fathom_desktop.chat_cli", "--model", str(demo_gguf)]
    argv += ["--n-ctx", N_CTX, "--threads", "2", "--temperature", "0", "--eval-preset"]
    argv += ["--prompt", SELF_TEST_QUESTION, "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout)


def test_the_window_against_llama_cpp_server_matches_the_local_engine(
    make_window, qtbot, llama_cpp_server: str, demo_gguf: Path
) -> None:
    window = make_window(
        settings={"model_source": "server", "server_url": llama_cpp_server, "temperature": 0.0}
    )
    assert window.model_label.text() == demo_gguf.name
    window.composer.set_text(SELF_TEST_QUESTION)
    window.composer.send_button.click()
    # A real server on a 2-core machine shared with others: give it minutes, not seconds.
    qtbot.waitUntil(lambda: window.session.state is SessionState.READY, timeout=300_000)
    reply = window.chat.assistant_messages()[-1]
    stored = window.session.history.messages(window.session.conversation_id)[-1]

    local = _local_reply(demo_gguf)
    assert stored.reasoning == local["reasoning"] and stored.reasoning
    assert stored.content == local["answer"]
    assert local["boxed"] == SELF_TEST_ANSWER
    assert reply.reasoning.text() == local["reasoning"]
    assert SELF_TEST_ANSWER in reply.answer.plain_text()
    # llama-cpp-python's server cannot continue a started reply: Answer now says why.
    assert "cannot continue a started reply" in window.composer.answer_now_button.toolTip()
