"""With no remote endpoint configured, nothing opens a network connection: not fathom-chat, not
the app's own end-to-end path (its self-test: demo model, engine, window)."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest

from fathom_desktop import chat_cli
from fathom_desktop.demo import SELF_TEST_QUESTION


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to connect a socket anywhere, refused and recorded."""
    attempts: list[object] = []

    def refuse(_sock: socket.socket, address: object, *args: object) -> None:
        attempts.append(address)
        raise OSError("the test forbids network connections")

    def no_lookups(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("the test forbids name lookups")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookups)
    return attempts


def test_fathom_chat_without_server_connects_nowhere(
    connections: list[object], demo_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = chat_cli.main(
        ["--model", str(demo_gguf), "--n-ctx", "1024", "--prompt", SELF_TEST_QUESTION, "--json"]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["answer"]
    assert connections == []


def test_the_apps_self_test_connects_nowhere(connections: list[object], demo_gguf: Path) -> None:
    from fathom_desktop.selftest import run_self_test

    out = io.StringIO()
    assert run_self_test(demo_gguf, out) == 0, out.getvalue()
    assert connections == []


def test_the_guard_itself_catches_a_connection(connections: list[object]) -> None:
    from fathom_desktop.engine.remote import RemoteEndpoint, RemoteEngine, RemoteError

    with pytest.raises(RemoteError):
        RemoteEngine(RemoteEndpoint("http://127.0.0.1:9/v1")).load()
    assert connections  # so an empty list above means no attempt, not a blind guard
