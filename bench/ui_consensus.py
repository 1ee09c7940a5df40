"""How the chat window copes with Consensus ×64: event-loop stalls while 64 lanes move at once.

Runs a consensus of K samples, all K decoding together (one token of each per step), through the
real window, worker thread and widgets (offscreen), with the fake engine standing in for
llama.cpp, and prints:

- the 99th-percentile event-loop stall (target <= 16 ms: one frame at 60 Hz), measured by a 5 ms
  timer whose late firings are the stalls;
- the GUI time spent on each progress batch (lanes, chart, the followed sample's pane), median
  and maximum, and how many batches came per second.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/ui_consensus.py [--samples 64] [--tokens 1500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QElapsedTimer, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from bench.ui_stream import STALL_TARGET_MS, TICK_MS, synthetic_reasoning  # noqa: E402


def run(samples: int, tokens: int, steps_per_s: float) -> tuple[list[float], list[float], float]:
    """(event-loop gaps in ms, GUI seconds per batch, wall seconds of the run)."""
    with tempfile.TemporaryDirectory(prefix="fathom-bench-") as scratch:
        return _run(Path(scratch), samples, tokens, steps_per_s)


def _run(home: Path, samples: int, tokens: int, steps_per_s: float):
    from fathom_desktop.engine.scripted import DEMO_MODEL_PATH, FakeEngine, FakeScript
    from fathom_desktop.engine.types import LoadOptions
    from fathom_desktop.gui.main_window import MainWindow
    from fathom_desktop.gui.session_types import SessionState
    from fathom_desktop.history import History
    from fathom_desktop.settings import SettingsStore

    app = QApplication.instance() or QApplication([])
    spent: list[float] = []

    class AllAtOnce(FakeEngine):
        def consensus(self, messages, sampling, k, control=None, on_event=None, *, parallel=None):
            return super().consensus(messages, sampling, k, control, on_event, parallel=k)

    class TimedWindow(MainWindow):
        def _on_consensus_progress(self, progress) -> None:
            started = time.perf_counter()
            super()._on_consensus_progress(progress)
            spent.append(time.perf_counter() - started)

    os.environ["FATHOM_HOME"] = str(home)
    scripts = [
        FakeScript(
            reasoning=synthetic_reasoning(tokens - index, seed=index),
            answer=f"So the answer is \\boxed{{{40 + index % 5}}}.",
        )
        for index in range(samples)
    ]
    engine = AllAtOnce(tokens_per_s=steps_per_s, sample_scripts=scripts)
    store = SettingsStore(home / "settings.json")
    store.update({"n_ctx": 32768})
    history = History(home / "history.sqlite3")
    window = TimedWindow(lambda: engine, store, history)
    window.resize(1100, 800)
    window.show()
    window.load_model(LoadOptions(model_path=DEMO_MODEL_PATH, n_ctx=32768))
    _pump_until(app, lambda: window.session.state is SessionState.READY, 30)

    clock = QElapsedTimer()
    ticker = QTimer()
    ticker.setTimerType(Qt.TimerType.PreciseTimer)
    ticker.setInterval(TICK_MS)
    gaps: list[float] = []
    last = [0]

    def tick() -> None:
        now = clock.nsecsElapsed()
        gaps.append((now - last[0]) / 1e6)
        last[0] = now

    ticker.timeout.connect(tick)
    window.composer.set_text("Think about it, many times over.")
    started = time.monotonic()
    window.consensus(samples)
    clock.start()
    ticker.start()
    limit = tokens / steps_per_s * 3 + 60
    _pump_until(app, lambda: window.session.state is SessionState.READY, limit)
    wall = time.monotonic() - started
    ticker.stop()
    window.shutdown()
    history.close()
    return gaps, spent, wall


def _pump_until(app: QApplication, condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting for the window")
        app.processEvents()
        time.sleep(0.0005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1500, help="reasoning tokens per sample")
    parser.add_argument("--steps", type=float, default=50.0, help="decode steps per second")
    args = parser.parse_args(argv)

    gaps, spent, wall = run(args.samples, args.tokens, args.steps)
    stalls = [max(gap - TICK_MS, 0.0) for gap in gaps[1:]]
    p99 = statistics.quantiles(stalls, n=100)[98]
    print(
        f"{args.samples} samples x ~{args.tokens:,} tokens, all at once, {args.steps:g} steps/s:"
        f" {wall:.1f} s"
    )
    print(
        f"progress batches: {len(spent):,} ({len(spent) / wall:.0f}/s); GUI time per batch:"
        f" median {statistics.median(spent) * 1e3:.2f} ms, max {max(spent) * 1e3:.1f} ms"
    )
    print(
        f"event-loop stall p99: {p99:.2f} ms (max {max(stalls):.1f} ms;"
        f" target <= {STALL_TARGET_MS:g})"
    )
    ok = p99 <= STALL_TARGET_MS
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
