"""How long hostile answers can stall the chat window: the worst GUI-thread stall per case.

Each answer of a hostile corpus (formulas whose layout time doubles with every level of nesting,
thousands of `\\boxed{` or `$`, a 1 MB line, 10,000-deep lists and quotes, code fences, `$$` and
`\\[` left open at 59 kB) goes through the real transcript widgets (offscreen) twice:

- streamed at 500 tokens/s (4-character tokens, a batch every 40 ms, as the worker sends them),
  then finished with the whole answer; a case too long to stream in --max-stream-s seconds
  streams its beginning and then finishes with all of it, as when the model ends;
- opened as a stored reply (what opening a saved conversation does).

A 5 ms heartbeat timer runs throughout; its worst lateness is the worst stall (target <= 50 ms).
On a loaded machine that lateness includes time the window waited for a CPU, so two more figures
are printed per case: "cpu", the GUI thread's own CPU time between two heartbeats (the work it
did in that stall), and "app", the CPU time of every thread of the window process in that time
(Qt splits large paint fills over helper threads that the GUI thread waits for). On a machine
with a CPU to spare a stall is at most about "app"; the rest is waiting for other programs.
Columns: worst / p99 / cpu / app, in ms. The script also checks that nothing was dropped: the
sentence after each case and its boxed answer are in the document.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/render_worst_case.py [--max-stream-s 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QElapsedTimer, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from tests.gui.hostile_answers import ENDING, corpus  # noqa: E402

TICK_MS = 5
STALL_TARGET_MS = 50.0
TOKENS_PER_S = 500.0
TOKEN_CHARS = 4
BATCH_MS = 40


@dataclass
class Heartbeat:
    gaps_ms: list[float] = field(default_factory=list)
    # GUI-thread CPU time between two heartbeats (the tick runs on the GUI thread)
    work_ms: list[float] = field(default_factory=list)
    # CPU time of every thread of the window process between two heartbeats (Qt's painting
    # helpers, the lanes): what the app itself did in that time
    app_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)
        self._last = 0

    def start(self) -> None:
        self.gaps_ms.clear()
        self.work_ms.clear()
        self.app_ms.clear()
        self._clock.start()
        self._last = 0
        self._last_cpu = time.thread_time()
        self._last_app = time.process_time()
        self._timer.start()

    def stop(self) -> list[float]:
        self._timer.stop()
        return [max(gap - TICK_MS, 0.0) for gap in self.gaps_ms[1:]]

    def _tick(self) -> None:
        now = self._clock.nsecsElapsed()
        cpu = time.thread_time()
        app = time.process_time()
        self.gaps_ms.append((now - self._last) / 1e6)
        self.work_ms.append((cpu - self._last_cpu) * 1e3)
        self.app_ms.append((app - self._last_app) * 1e3)
        self._last, self._last_cpu, self._last_app = now, cpu, app


@dataclass(frozen=True)
class Result:
    worst_ms: float
    p99_ms: float
    worst_work_ms: float  # GUI-thread CPU time between two heartbeats, at most
    worst_app_ms: float  # CPU time of the whole window process between two heartbeats, at most
    seconds: float  # from the first character (or the opening) to everything drawn
    complete: bool  # the sentence after the case and its boxed answer are in the document
    formulas: int
    refused: int


def _pump_until(app: QApplication, condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.0005)
    return True


def _measure(app, chat, answer: str, stream: bool, max_stream_s: float) -> Result:
    from fathom_desktop.render.math import formula_images

    chat.clear()
    app.processEvents()
    widget = chat.add_assistant(1)
    heartbeat = Heartbeat()
    heartbeat.start()
    started = time.monotonic()
    if stream:
        per_batch = int(TOKENS_PER_S * BATCH_MS / 1000) * TOKEN_CHARS
        limit = min(len(answer), int(max_stream_s * TOKENS_PER_S * TOKEN_CHARS))
        sent = [0]

        def batch() -> None:
            end = min(sent[0] + per_batch, limit)
            widget.append("", answer[sent[0] : end], 0)
            sent[0] = end

        feeder = QTimer()
        feeder.setInterval(BATCH_MS)
        feeder.timeout.connect(batch)
        feeder.start()
        _pump_until(app, lambda: sent[0] >= limit, max_stream_s * 3 + 30)
        feeder.stop()
    widget.finish(answer, 0, "", False)
    view = widget.answer
    done = _pump_until(app, lambda: view.is_rendered() and formula_images().pending() == 0, 600)
    seconds = time.monotonic() - started
    _pump_until(app, lambda: False, 0.3)  # painting what arrived last is part of the cost
    stalls = heartbeat.stop() or [0.0]
    work = heartbeat.work_ms[1:] or [0.0]
    app_work = heartbeat.app_ms[1:] or [0.0]
    shown = view.toPlainText()
    boxed = [s for s in view.document().placeholders.values() if "\\boxed{42}" in s]
    # In the open fence the ending is code, as CommonMark has it: text, not a formula.
    complete = (
        done
        and "After all that, the answer is" in shown
        and (bool(boxed) or "\\boxed{42}" in shown)
    )
    return Result(
        max(stalls),
        statistics.quantiles(stalls, n=100)[98] if len(stalls) > 2 else max(stalls),
        max(work),
        max(app_work),
        seconds,
        complete,
        view.formulas - view.unrendered,
        view.refused,
    )


def _figures(result: Result) -> str:
    return (
        f"{result.worst_ms:.1f} / {result.p99_ms:.1f} / {result.worst_work_ms:.1f}"
        f" / {result.worst_app_ms:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-stream-s", type=float, default=30.0)
    parser.add_argument("--only", help="run the cases whose name contains this")
    args = parser.parse_args(argv)

    from fathom_desktop.gui.chat_view import ChatView
    from fathom_desktop.render.math import start_warm_up

    app = QApplication.instance() or QApplication([])
    chat = ChatView()
    chat.resize(1100, 800)
    chat.show()
    start_warm_up()
    _pump_until(app, lambda: False, 2.0)  # the font tables load before timing starts

    worst = worst_work = worst_app = 0.0
    ok = True
    print(
        f"{'case':30} {'chars':>9}  {'streamed: worst/p99/cpu/app ms':>30}"
        f"  {'opened: worst/p99/cpu/app ms':>30}  drawn  refused  complete  (opened: s to drawn)"
    )
    for name, case in corpus().items():
        if args.only and args.only not in name:
            continue
        answer = case + ENDING
        streamed = _measure(app, chat, answer, True, args.max_stream_s)
        opened = _measure(app, chat, answer, False, args.max_stream_s)
        worst = max(worst, streamed.worst_ms, opened.worst_ms)
        worst_work = max(worst_work, streamed.worst_work_ms, opened.worst_work_ms)
        worst_app = max(worst_app, streamed.worst_app_ms, opened.worst_app_ms)
        complete = streamed.complete and opened.complete
        ok = ok and complete
        print(
            f"{name:30} {len(answer):>9,}  {_figures(streamed):>30}  {_figures(opened):>30}"
            f"  {opened.formulas:>5}  {opened.refused:>7}  {'yes' if complete else 'NO':>8}"
            f"  ({opened.seconds:.1f} s)",
            flush=True,
        )
    print(f"worst GUI-thread CPU time between heartbeats: {worst_work:.1f} ms")
    print(f"worst CPU time of the whole window process between heartbeats: {worst_app:.1f} ms")
    print(f"worst GUI-thread stall: {worst:.1f} ms (target <= {STALL_TARGET_MS:g} ms);"
          f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    ok = ok and worst <= STALL_TARGET_MS
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
