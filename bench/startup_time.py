"""Time from launching Fathom Desktop to its main window being visible on an X display.

    python bench/startup_time.py                       # the package in dist/cpu/fathom-desktop
    python bench/startup_time.py --app PATH/fathom-desktop --runs 7
    python bench/startup_time.py --source              # python -m fathom_desktop, for comparison
    python bench/startup_time.py --screenshot shot.png # also save the screen after the last run

Starts its own Xvfb (Debian: apt-get install xvfb xdotool imagemagick) and polls it with
`xdotool search --onlyvisible` until a window titled "Fathom Desktop" is mapped, so the figure
includes everything a user waits for: the launcher unpacking nothing (one-folder build), Python
starting, imports, Qt and the first paint request. Each run gets the same HOME; the first run,
which also creates the settings and history files, is reported apart from the median of the rest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_APP = ROOT / "dist" / "cpu" / "fathom-desktop" / "fathom-desktop"
WINDOW_TITLE = "^Fathom Desktop$"
POLL_S = 0.01
TIMEOUT_S = 60.0


class BenchError(Exception):
    pass


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BenchError(f"{tool} is not installed; apt-get install {package}")
    return path


@contextmanager
def xvfb(width: int = 1280, height: int = 860) -> Iterator[str]:
    """A private X display for the duration of the block; yields its DISPLAY value.

    Xvfb picks a free display number itself (-displayfd) and reports it once it accepts clients,
    so two benchmarks, or another program's Xvfb, never race for the same number.
    """
    server = _require("Xvfb", "xvfb")
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [
            server,
            "-displayfd",
            str(write_end),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
            # Without it the server resets whenever its last client leaves (each xdotool poll,
            # each app run) and refuses connections while it does.
            "-noreset",
        ],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as reported:
            number = reported.readline().strip()
        if not number.isdigit():
            raise BenchError("Xvfb did not start")
        yield f":{number}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _window_visible(xdotool: str, env: dict[str, str]) -> bool:
    done = subprocess.run(
        [xdotool, "search", "--onlyvisible", "--name", WINDOW_TITLE],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and bool(done.stdout.strip())


def time_one_start(
    command: list[str], env: dict[str, str], screenshot: Path | None = None
) -> float:
    xdotool = _require("xdotool", "xdotool")
    started = time.perf_counter()
    app = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not _window_visible(xdotool, env):
            if app.poll() is not None:
                error = app.stderr.read().decode(errors="replace").strip() if app.stderr else ""
                raise BenchError(
                    f"the app exited ({app.returncode}) before showing a window: "
                    f"{error if error else 'no message'}"
                )
            if time.perf_counter() - started > TIMEOUT_S:
                raise BenchError(f"no window within {TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        if screenshot is not None:
            time.sleep(2.0)  # let the first paint and the first-run dialog settle
            importer = _require("import", "imagemagick")
            subprocess.run([importer, "-window", "root", str(screenshot)], env=env, check=True)
        return elapsed
    finally:
        app.terminate()
        try:
            app.wait(timeout=15)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", type=Path, default=DEFAULT_APP, help="packaged launcher to time")
    parser.add_argument("--source", action="store_true", help="time `python -m fathom_desktop`")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after the first")
    parser.add_argument("--screenshot", type=Path, help="PNG of the screen after the last run")
    parser.add_argument("--fake-engine", action="store_true", help="pass --fake-engine to the app")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    if args.source:
        command = [sys.executable, "-m", "fathom_desktop"]
        what = "source (python -m fathom_desktop)"
    else:
        if not (args.app.is_file() and os.access(args.app, os.X_OK)):
            print(
                f"startup_time.py: {args.app} is not an executable; build it with "
                "packaging/build.py or pass --app.",
                file=sys.stderr,
            )
            return 2
        command = [str(args.app)]
        what = f"package ({args.app})"
    if args.fake_engine:
        command.append("--fake-engine")

    try:
        with tempfile.TemporaryDirectory(prefix="fathom-startup-") as home, xvfb() as display:
            env = {
                "HOME": home,
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "DISPLAY": display,
                "QT_QPA_PLATFORM": "xcb",
            }
            if args.source:
                env["PYTHONPATH"] = str(ROOT)
            first = time_one_start(command, env)
            runs = [
                time_one_start(command, env, args.screenshot if i == args.runs - 1 else None)
                for i in range(args.runs)
            ]
    except BenchError as error:
        print(f"startup_time.py: {error}", file=sys.stderr)
        return 1
    print(f"startup to a visible main window, {what}")
    print(f"  first run (creates settings and history): {first:.2f} s")
    print(
        f"  median of {len(runs)} more: {statistics.median(runs):.2f} s "
        f"(min {min(runs):.2f}, max {max(runs):.2f})"
    )
    if args.screenshot is not None:
        print(f"  screenshot: {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
