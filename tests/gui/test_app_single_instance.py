"""One Fathom Desktop per user: a second start brings the first window forward and exits with
one line; a killed one, or a lock file naming a reused PID, locks no one out."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fathom_desktop.single_instance import (
    LOCK_FILE_NAME,
    InstanceLockError,
    InstanceServer,
    bring_to_front,
    hold_instance_lock,
    server_name,
)
from tests.conftest import PROJECT_ROOT

START_TIMEOUT_S = 90  # a cold Python + Qt start on a busy 2-core box

HOLD_LOCK_CHILD = """
import sys, time
from pathlib import Path
from fathom_desktop.single_instance import hold_instance_lock
lock = hold_instance_lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""

ASK_TO_RAISE_CHILD = """
import sys
from fathom_desktop.single_instance import ask_first_instance_to_raise
print(ask_first_instance_to_raise(sys.argv[1]), flush=True)
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
        [sys.executable, "-c", HOLD_LOCK_CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(InstanceLockError, match=f"process {child.pid}"):
            hold_instance_lock(tmp_path)
    finally:
        child.kill()  # SIGKILL: no chance to remove its lock file
        child.wait()
    assert lock_file.read_text() == f"{child.pid}\n"  # left behind, naming a process that is gone
    lock = hold_instance_lock(tmp_path)
    lock.unlock()


@pytest.mark.parametrize("left_by", ["this version", "QLockFile"])
def test_a_lock_file_naming_a_pid_reused_by_another_program_does_not_block(tmp_path, left_by):
    # The PID in the file is alive, but it is not Fathom Desktop (here: a sleep), as after a
    # crash and a reboot. Only a held lock blocks, never a file's contents.
    other = subprocess.Popen(["sleep", "60"])
    try:
        lock_file = tmp_path / LOCK_FILE_NAME
        if left_by == "QLockFile":
            lock_file.write_text(f"{other.pid}\nfathom-desktop\n{os.uname().nodename}\n")
        else:
            lock_file.write_text(f"{other.pid}\n")
        lock = hold_instance_lock(tmp_path)
        assert lock_file.read_text() == f"{os.getpid()}\n"
        lock.unlock()
    finally:
        other.kill()
        other.wait()


def test_a_second_start_brings_the_first_window_forward(qtbot, tmp_path):
    from PySide6.QtWidgets import QMainWindow

    window = QMainWindow()
    qtbot.addWidget(window)
    window.show()
    window.showMinimized()
    assert window.isMinimized()
    name = server_name(tmp_path)
    server = InstanceServer(name, window)
    assert server.listening
    server.raise_requested.connect(lambda: bring_to_front(window))
    child = subprocess.Popen(
        [sys.executable, "-c", ASK_TO_RAISE_CHILD, name],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        # The event loop runs while we wait, so the server answers.
        qtbot.waitUntil(lambda: child.poll() is not None, timeout=START_TIMEOUT_S * 1000)
        assert child.stdout.read().strip() == "True"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert not window.isMinimized() and window.isVisible()
    server.close()


def test_asking_when_no_instance_listens_says_no(tmp_path):
    from fathom_desktop.single_instance import ask_first_instance_to_raise

    assert ask_first_instance_to_raise(server_name(tmp_path), timeout_ms=500) is False


def test_the_app_starts_without_qtnetwork(tmp_path):
    # The package leaves PySide6.QtNetwork out (packaging/bundle_policy.py): the lock and the
    # raise request must not need it.
    child = textwrap.dedent(
        """
        import sys
        sys.modules["PySide6.QtNetwork"] = None  # as in the package: not there
        from pathlib import Path
        from fathom_desktop import app, single_instance
        lock = single_instance.hold_instance_lock(Path(sys.argv[1]))
        server = single_instance.InstanceServer(single_instance.server_name(Path(sys.argv[1])))
        print(server.listening)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=START_TIMEOUT_S,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


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
            f"Fathom Desktop is already running (process {first.pid});"
            " its window was brought to the front."
        ]
        assert second.stdout == ""
        assert first.poll() is None  # the first one is untouched
    finally:
        first.kill()
        first.wait()
