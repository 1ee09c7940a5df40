"""The fathom-serve program: safe defaults, one-line refusals, and a real start and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from fathom_desktop.demo import SELF_TEST_ANSWER, SELF_TEST_QUESTION
from fathom_desktop.serve import cli
from tests.serve.test_llama_cpp_server import _free_port


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "gpu-box.lan"])
def test_a_public_address_without_a_key_is_refused_in_one_line(
    host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    assert cli.main(["--host", host]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without an API key" in err and host in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert cli.is_loopback(host) is loopback


def test_a_bad_model_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf at all" * 100)
    assert cli.main(["--model", str(bogus), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fathom-serve: ") and err.count("\n") == 1


@pytest.mark.slow
def test_the_program_serves_and_stops_cleanly(demo_gguf: Path) -> None:
    port = _free_port()
    env = {**os.environ, cli.API_KEY_ENV: "sesame"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fathom_desktop.serve",
            "--model",
            str(demo_gguf),
            "--port",
            str(port),
            "--n-ctx",
            "1024",
            "--threads",
            "2",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesame")
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": SELF_TEST_QUESTION}], temperature=0
        )
        assert f"\\boxed{{{SELF_TEST_ANSWER}}}" in reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        err = process.stderr.read()
    assert code == 0, err
    assert f"serving {demo_gguf.stem}" in err and "API key required" in err
    assert "Traceback" not in err


def test_without_model_it_serves_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: dict[str, object] = {}

    def fake_serve(runner, config, host, port) -> int:  # the port is never opened
        served.update(model=config.model_id, n_ctx=config.n_ctx, host=host)
        runner.close()
        return 0

    monkeypatch.setattr(cli, "_serve", fake_serve)
    assert cli.main(["--n-ctx", "1024"]) == 0
    assert str(served["model"]).startswith("fathom-tiny-") and served["n_ctx"] == 1024
    assert served["host"] == "127.0.0.1"
    assert "demo model fathom-tiny" in capsys.readouterr().err
