"""How the chat window copes with a long stream: event-loop stalls and per-token GUI cost.

Streams a synthetic 16,000-token reasoning at 500 tokens/s through the real window, worker thread
and widgets (offscreen), with the fake engine standing in for llama.cpp, and prints:

- the 99th-percentile event-loop stall (target <= 16 ms: one frame at 60 Hz), measured by a 5 ms
  timer whose late firings are the stalls;
- the GUI time per token spent handling the worker's batches near token 15,000 against near
  token 1,000 (target <= 1.5x): flat means nothing re-renders the whole text as it grows.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/ui_stream.py [--tokens 16000] [--rate 500]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QElapsedTimer, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

TICK_MS = 5
STALL_TARGET_MS = 16.0
GROWTH_TARGET = 1.5
WINDOW_TOKENS = 500  # tokens either side of 1,000 and 15,000 that make up each sample

_WORDS = (
    "so", "the", "sum", "of", "first", "odd", "numbers", "is", "square", "let", "me", "check",
    "again", "case", "n", "equals", "two", "three", "which", "gives", "wait", "that", "means",
    "we", "need", "x", "plus", "y", "over", "factor", "prime", "modulo", "remainder",
)  # fmt: skip


def synthetic_reasoning(tokens: int, seed: int = 7, line_breaks: bool = True) -> str:
    """`tokens` fake-engine tokens (one per word) in lines and paragraphs, like R1's thinking;
    without `line_breaks`, one unbroken paragraph (the worst case for text layout)."""
    rng = random.Random(seed)
    words: list[str] = []
    for index in range(tokens):
        word = rng.choice(_WORDS) if index % 9 else str(rng.randint(2, 999))
        if not line_breaks:
            words.append((" " if index else "") + word)
        elif index and index % 200 == 0:
            words.append("\n\n" + word)
        elif index and index % 40 == 0:
            words.append("\n" + word)
        else:
            words.append((" " if index else "") + word)
    return "".join(words)


@dataclass
class Measurements:
    gaps_ms: list[float] = field(default_factory=list)
    # (reasoning tokens after the batch, tokens in the batch, seconds the GUI spent on it)
    batches: list[tuple[int, int, float]] = field(default_factory=list)

    def per_token_ms(self, around: int) -> float:
        """Median over the batches near `around` of (GUI time / tokens in the batch).

        The median, so that one batch delayed by another process on a busy machine does not
        decide the figure; a cost that grows with the text moves every batch, and the median."""
        chosen = [b for b in self.batches if abs(b[0] - around) <= WINDOW_TOKENS]
        if not chosen:
            return float("nan")
        return 1000 * statistics.median(spent / new for _, new, spent in chosen)


def run(tokens: int, rate: float, line_breaks: bool = True) -> Measurements:
    with tempfile.TemporaryDirectory(prefix="fathom-bench-") as scratch:
        return _run(Path(scratch), tokens, rate, line_breaks)


def _run(home: Path, tokens: int, rate: float, line_breaks: bool) -> Measurements:
    from fathom_desktop.engine.scripted import DEMO_MODEL_PATH, FakeEngine, FakeScript
    from fathom_desktop.engine.types import LoadOptions
    from fathom_desktop.gui.main_window import MainWindow
    from fathom_desktop.gui.session_types import SessionState
    from fathom_desktop.history import History
    from fathom_desktop.settings import SettingsStore

    app = QApplication.instance() or QApplication([])
    measured = Measurements()

    class TimedWindow(MainWindow):
        """Times the GUI-thread handler of each batch (widgets, meter, status bar)."""

        _last_tokens = 0

        def _on_reply_text(self, text) -> None:
            started = time.perf_counter()
            super()._on_reply_text(text)
            spent = time.perf_counter() - started
            new = text.reasoning_tokens - self._last_tokens
            self._last_tokens = text.reasoning_tokens
            if new > 0:
                measured.batches.append((text.reasoning_tokens, new, spent))

    os.environ["FATHOM_HOME"] = str(home)
    reasoning = synthetic_reasoning(tokens, line_breaks=line_breaks)
    script = FakeScript(reasoning=reasoning, answer="The answer is \\boxed{42}.")
    engine = FakeEngine(script, tokens_per_s=rate)
    store = SettingsStore(home / "settings.json")
    store.update({"n_ctx": 32768, "collapse_reasoning_when_answering": False})
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
    last = [0]

    def tick() -> None:
        now = clock.nsecsElapsed()
        measured.gaps_ms.append((now - last[0]) / 1e6)
        last[0] = now

    ticker.timeout.connect(tick)
    window.session.send("Think about it for a long while.")
    clock.start()
    ticker.start()
    _pump_until(app, lambda: window.session.state is SessionState.READY, tokens / rate * 3 + 60)
    ticker.stop()
    window.shutdown()
    history.close()
    return measured


def _pump_until(app: QApplication, condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting for the window")
        app.processEvents()
        time.sleep(0.0005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16_000)
    parser.add_argument("--rate", type=float, default=500.0, help="tokens per second")
    parser.add_argument(
        "--one-paragraph", action="store_true", help="stream one unbroken paragraph (worst case)"
    )
    args = parser.parse_args(argv)
    if args.tokens < 15_000 + WINDOW_TOKENS:
        parser.error(f"--tokens must be at least {15_000 + WINDOW_TOKENS} to sample token 15,000")

    started = time.monotonic()
    measured = run(args.tokens, args.rate, line_breaks=not args.one_paragraph)
    wall = time.monotonic() - started
    stalls = [max(gap - TICK_MS, 0.0) for gap in measured.gaps_ms[1:]]
    p99 = statistics.quantiles(stalls, n=100)[98]
    early, late = measured.per_token_ms(1_000), measured.per_token_ms(15_000)
    growth = late / early
    batch_sizes = [b[1] for b in measured.batches]

    print(f"streamed {sum(batch_sizes):,} reasoning tokens at {args.rate:g} tok/s in {wall:.1f} s")
    print(f"batches: {len(batch_sizes):,}, median {statistics.median(batch_sizes):.0f} tokens")
    print(
        f"event-loop stall p99: {p99:.2f} ms (max {max(stalls):.1f} ms;"
        f" target <= {STALL_TARGET_MS:g})"
    )
    print(f"GUI cost per token near 1,000: {early * 1e3:.1f} us; near 15,000: {late * 1e3:.1f} us")
    print(f"growth 15,000 vs 1,000: {growth:.2f}x (target <= {GROWTH_TARGET:g}x)")
    ok = p99 <= STALL_TARGET_MS and growth <= GROWTH_TARGET
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
