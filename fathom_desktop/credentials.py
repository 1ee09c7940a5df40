"""API keys in the operating system's keyring, never in the settings file.

Two keys: the one the app sends to a remote server, and the one its own local API server asks of
its clients. Both go through the `keyring` library (Secret Service, macOS Keychain, Windows
Credential Locker). Where no keyring is available, a key the user types is kept in memory for
this run only, and the caller is told so in one line.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import keyring
from keyring.errors import KeyringError, NoKeyringError, PasswordDeleteError

log = logging.getLogger(__name__)

SERVICE = "fathom-desktop"
REMOTE_SERVER = "remote-server"  # the key sent to the OpenAI-compatible server in Settings
LOCAL_API_SERVER = "local-api-server"  # the key the app's own API server requires

# Keys set or read during this run: the keyring is asked once, and a key that could not be
# stored still works until the app closes.
_cache: dict[str, str | None] = {}
_lock = threading.Lock()


class KeyNotSaved(Exception):  # noqa: N818 - not an error for the key, which stays usable
    """The key could not go into the keyring; str() is one line for the user."""


def api_key(account: str) -> str | None:
    """The key stored for `account`, or None. May block on the keyring: call it off the GUI
    thread."""
    with _lock:
        if account in _cache:
            return _cache[account]
    try:
        key = keyring.get_password(SERVICE, account) or None
    except NoKeyringError:
        log.info("no system keyring here: no stored %s key", account)
        key = None
    except (KeyringError, RuntimeError) as error:  # a locked keyring refused, a broken one
        log.warning("could not read the %s key from the keyring: %s", account, error)
        key = None
    with _lock:
        return _cache.setdefault(account, key)


def set_api_key(account: str, key: str | None) -> None:
    """Store (or, for None/"", delete) the key. It is used at once whatever happens; raises
    KeyNotSaved when the keyring could not keep it for the next run."""
    key = key or None
    with _lock:
        if account in _cache and _cache[account] == key:
            return
        _cache[account] = key
    try:
        if key is None:
            with contextlib.suppress(PasswordDeleteError):  # there was none
                keyring.delete_password(SERVICE, account)
        else:
            keyring.set_password(SERVICE, account, key)
    except (KeyringError, RuntimeError) as error:
        raise KeyNotSaved(
            f"The API key could not be saved in the system keyring ({error or 'no keyring'}); "
            "it is used until the app closes."
        ) from None


def forget_cached() -> None:
    """Ask the keyring again next time (tests switch keyrings)."""
    with _lock:
        _cache.clear()
