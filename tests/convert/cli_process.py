"""Runs `python -m convert` in a child process and presses Ctrl-C at a chosen moment."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def interrupt_cli(
    args: list[str],
    *,
    when: Callable[[], bool],
    waiting_for: str,
    env: Mapping[str, str] | None = None,
    start_timeout: float = 60,
    exit_timeout: float = 30,
) -> tuple[int, str]:
    """Start `fathom-convert ARGS`, send SIGINT once `when()` holds; return (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "convert", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + start_timeout
        while not when():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{waiting_for} never happened"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=exit_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err
