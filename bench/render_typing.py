"""Typing while the worst hostile answer renders: how long a key takes to show in the composer.

A scratch home gets a saved conversation whose answer is the whole hostile corpus in one
(tests/gui/hostile_answers.worst_case: 1.3 MB, every case that once froze the window). The app
starts on it with the stand-in engine, and as soon as its window is up xdotool clicks the
composer and types a sentence one key at a time, while the answer is still rendering. The app
logs when the composer's text changes; each key's latency is from just before xdotool was asked
to send it to the text growing by it (xdotool's own start-up, a few ms, is included).

Needs an X display (Xvfb is enough) and xdotool; the machine and its load are printed.

    Xvfb :11 -screen 0 1280x800x24 &
    DISPLAY=:11 .venv/bin/python bench/render_typing.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "Why does the continued fraction converge so fast? Tell me."
KEY_PAUSE_S = 0.08
# Where the composer is in the app's default 1100x760 window (the window is placed at 0,0).
COMPOSER_XY = (630, 685)

# The app, with a hook that logs each change of the composer's length.
_APP = """
import sys, time
from fathom_desktop.gui import main_window
log = open(sys.argv[1], "w", buffering=1)
made = main_window.MainWindow.__init__
def init(self, *args, **kwargs):
    made(self, *args, **kwargs)
    edit = self.composer.edit
    edit.textChanged.connect(lambda: log.write(f"{time.time()} {len(edit.toPlainText())}\\n"))
main_window.MainWindow.__init__ = init
from fathom_desktop.app import main
sys.argv = ["fathom-desktop", "--fake-engine"]
sys.exit(main())
"""


def _prepare(home: Path) -> int:
    os.environ["FATHOM_HOME"] = str(home)
    sys.path.insert(0, str(ROOT))
    from fathom_desktop import paths
    from fathom_desktop.history import History, MessageStatus
    from tests.gui.hostile_answers import worst_case

    answer = worst_case()
    with History(paths.history_db()) as history:
        conversation = history.create_conversation("The whole hostile corpus")
        history.add_user_message(conversation, "Show me everything that once froze the window.")
        reply = history.begin_assistant_message(conversation, None, None, None)
        history.finish_assistant_message(reply, "", answer, None, MessageStatus.COMPLETE)
    return len(answer)


def _xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, capture_output=True)


def main() -> int:
    if not os.environ.get("DISPLAY") or shutil.which("xdotool") is None:
        print("needs an X display (DISPLAY) and xdotool", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="fathom-typing-bench-"))
    chars = _prepare(scratch / "home")
    log = scratch / "composer.log"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env |= {"FATHOM_HOME": str(scratch / "home")}
    env |= {f"XDG_{kind}_HOME": str(scratch / kind.lower()) for kind in ("CONFIG", "DATA", "CACHE")}
    load_before = os.getloadavg()[0]
    app = subprocess.Popen([sys.executable, "-c", _APP, str(log)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["xdotool", "search", "--name", "hostile corpus"], capture_output=True
        ).returncode:
            if time.monotonic() > deadline:
                print("the window did not appear", file=sys.stderr)
                return 1
            time.sleep(0.05)
        _xdotool("mousemove", *map(str, COMPOSER_XY), "click", "1")
        sent: list[float] = []
        for key in SENTENCE:
            sent.append(time.time())
            if key == " ":
                _xdotool("key", "space")
            else:
                _xdotool("type", "--", key)
            time.sleep(KEY_PAUSE_S)
        time.sleep(1.0)
    finally:
        app.terminate()
        app.wait(timeout=30)
    shown: dict[int, float] = {}
    for line in log.read_text().splitlines():
        stamp, length = line.split()
        shown.setdefault(int(length), float(stamp))
    latencies = sorted((shown[n + 1] - at) * 1e3 for n, at in enumerate(sent) if n + 1 in shown)
    shutil.rmtree(scratch, ignore_errors=True)
    if not latencies:
        print("no key reached the composer", file=sys.stderr)
        return 1
    print(f"answer: {chars:,} characters, rendering while {len(sent)} keys were typed")
    print(
        f"key to text: median {latencies[len(latencies) // 2]:.1f} ms, "
        f"p90 {latencies[int(len(latencies) * 0.9)]:.1f} ms, max {latencies[-1]:.1f} ms; "
        f"{len(latencies)} of {len(sent)} keys shown"
    )
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0 if len(latencies) == len(sent) else 1


if __name__ == "__main__":
    sys.exit(main())
