"""One Fathom Desktop per user: a second start says so and exits; a killed one locks no one out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fathom_desktop.app import LOCK_FILE_NAME, InstanceLockError, hold_instance_lock
from tests.conftest import PROJECT_ROOT

START_TIMEOUT_S = 90  # a cold Python + Qt start on a busy 2-core box

HOLD_LOCK_CHILD = """
import sys, time
from PySide6.QtCore import QLockFile
lock = QLockFile(sys.argv[1])
lock.setStaleLockTime(0)
assert lock.tryLock(0)
print("locked", flush=True)
time.sleep(600)
"""


def _app(*args: str) -> list[str]:
    return [sys.executable, "-m", "fathom_desktop", *args]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "FATHOM_HOME": str(home)}


def test_a_second_lock_in_the_same_folder_is_refused_until_the_first_is_released(tmp_path):
    first = hold_instance_lock(tmp_path)
    with pytest.raises(InstanceLockError) as raised:
        hold_instance_lock(tmp_path)
    assert str(raised.value) == f"Fathom Desktop is already running (process {os.getpid()})."
    first.unlock()
    hold_instance_lock(tmp_path).unlock()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    lock_file = tmp_path / LOCK_FILE_NAME
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_CHILD, str(lock_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(InstanceLockError, match=f"process {child.pid}"):
            hold_instance_lock(tmp_path)
    finally:
        child.kill()  # SIGKILL: no chance to remove its lock file
        child.wait()
    assert lock_file.exists()  # left behind, naming a process that is gone
    lock = hold_instance_lock(tmp_path)
    lock.unlock()


def test_starting_the_app_twice_exits_the_second_with_one_line(tmp_path):
    home = tmp_path / "home"
    lock_file = home / "data" / LOCK_FILE_NAME
    first = subprocess.Popen(
        _app("--fake-engine"),
        cwd=PROJECT_ROOT,
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not lock_file.exists():
            assert first.poll() is None, "the first instance exited"
            assert time.monotonic() < deadline, "the first instance never took the lock"
            time.sleep(0.2)
        second = subprocess.run(
            _app("--fake-engine"),
            cwd=PROJECT_ROOT,
            env=_env(home),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        assert second.returncode == 1
        assert second.stderr.splitlines() == [
            f"Fathom Desktop is already running (process {first.pid})."
        ]
        assert second.stdout == ""
        assert first.poll() is None  # the first one is untouched
    finally:
        first.kill()
        first.wait()
