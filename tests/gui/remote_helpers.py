"""A keyring that lives in the test's memory, and small helpers for the remote-engine GUI tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import keyring
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from fathom_desktop import credentials


class MemoryKeyring(KeyringBackend):
    """Stands in for the system keyring: never the user's real one."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError("no such password")


def in_memory_keyring() -> Iterator[MemoryKeyring]:
    """The body of a `memory_keyring` fixture: the suite's keyring swapped for a MemoryKeyring."""
    previous = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    credentials.forget_cached()
    yield ring
    keyring.set_keyring(previous)
    credentials.forget_cached()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
