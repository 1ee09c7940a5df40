"""`fathom-desktop --self-test`: prove, without a display, that this copy of the app works.

Runs the same path a user's first question takes, on the bundled demo model: make the demo GGUF
(converted into the user data folder on first use), load it through the engine, ask one question,
split the reply into reasoning and answer, and read the \\boxed{} answer. Then builds the main
window offscreen. Prints one summary line; exits 0, or 1 naming the step that failed and why.
Works the same in the PyInstaller package and from a source checkout.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TextIO, TypeVar

from fathom_desktop.engine.consensus import extract_boxed, normalize_answer
from fathom_desktop.engine.planner import layers_on_gpu
from fathom_desktop.engine.types import (
    FATHOM_EVAL_INSTRUCTION,
    ChatMessage,
    Finished,
    FinishReason,
    LoadOptions,
    LoadReport,
    SamplingParams,
)

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1

# Small: the demo model's replies are a few hundred tokens, and a short context keeps the
# KV cache (and the load) quick on any machine.
SELF_TEST_N_CTX = 2048
SELF_TEST_MAX_TOKENS = 1024
THINK_TAGS = ("<think>", "</think>")


class Step(StrEnum):
    BACKEND = "llama.cpp backend"
    MODEL = "demo model"
    LOAD = "model load"
    GENERATE = "generation"
    SPLIT = "reasoning split"
    ANSWER = "boxed answer"
    GUI = "GUI"


class SelfTestFailure(Exception):
    def __init__(self, step: Step, reason: str) -> None:
        super().__init__(f"{step.value}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class Probe:
    """The question the self-test asks and the answer it must get back."""

    question: str
    expected: str


# Asked of a model given with --model: any Fathom-like model gets this right.
OWN_MODEL_PROBE = Probe(question=f"What is 17 + 25? {FATHOM_EVAL_INSTRUCTION}", expected="42")


@dataclass(frozen=True)
class SelfTestReport:
    model: Path
    load: LoadReport
    backend: str
    boxed: str
    reasoning_tokens: int
    answer_tokens: int
    decode_tokens_per_s: float
    qt: str
    seconds: float

    def summary(self) -> str:
        where = layers_on_gpu(self.load.n_gpu_layers, self.load.n_layers)
        return (
            f"self-test passed in {self.seconds:.1f} s: {self.model.name} "
            f"({self.load.file_type}, {self.backend} backend, {where}) answered "
            f"\\boxed{{{self.boxed}}} after {self.reasoning_tokens} reasoning tokens "
            f"({self.decode_tokens_per_s:.0f} tok/s); main window built offscreen (Qt {self.qt})"
        )


def _demo_model() -> tuple[Path, Probe]:
    try:
        from fathom_desktop import demo
    except ImportError as error:
        raise SelfTestFailure(Step.MODEL, f"the demo model module is missing ({error})") from None
    from convert.errors import ConversionError

    try:
        path = demo.ensure_demo_model()
    except ConversionError as error:
        raise SelfTestFailure(Step.MODEL, str(error)) from None
    return path, Probe(question=demo.SELF_TEST_QUESTION, expected=demo.SELF_TEST_ANSWER)


def _backend_name() -> str:
    # Asked of a child process, as the window asks it (backend_probe.py).
    from fathom_desktop.engine.backend_probe import backend_facts

    facts = backend_facts()
    if facts.problem is not None:
        raise SelfTestFailure(Step.BACKEND, facts.problem)
    return "CUDA" if facts.build.is_cuda else "CPU"


def check_reply(finished: Finished, probe: Probe) -> str:
    """The boxed answer, once the reply passed every check; raises SelfTestFailure otherwise."""
    reason = finished.stats.finish_reason
    if reason is not FinishReason.STOP:
        raise SelfTestFailure(
            Step.GENERATE, f"the reply did not end by itself (finish reason: {reason.value})"
        )
    if not finished.reasoning.strip():
        raise SelfTestFailure(Step.SPLIT, "the reply has no reasoning before </think>")
    if not finished.answer.strip():
        raise SelfTestFailure(Step.SPLIT, "the reply has no answer after </think>")
    # What the user sees must not show the markup, whether the splitter missed a tag or the
    # model wrote one twice.
    for part, text in (("reasoning", finished.reasoning), ("answer", finished.answer)):
        for tag in THINK_TAGS:
            if tag in text:
                raise SelfTestFailure(Step.SPLIT, f"{tag} is left in the {part} text")
    boxed = extract_boxed(finished.answer)
    if not boxed:
        tail = " ".join(finished.answer.split())[-80:]
        raise SelfTestFailure(Step.ANSWER, f"the answer has no \\boxed{{}}: ...{tail!r}")
    if normalize_answer(boxed) != normalize_answer(probe.expected):
        raise SelfTestFailure(
            Step.ANSWER, f"expected \\boxed{{{probe.expected}}}, got \\boxed{{{boxed}}}"
        )
    return boxed


def _generate(model: Path, probe: Probe) -> tuple[LoadReport, Finished]:
    # Through the engine host, as the window's replies go: this also proves that this copy of
    # the app can start its engine's child process (frozen, the launcher must run it).
    from fathom_desktop.engine.errors import EngineError
    from fathom_desktop.engine.process_engine import ProcessEngine

    engine = ProcessEngine()
    try:
        try:
            report = engine.load(LoadOptions(model_path=model, n_ctx=SELF_TEST_N_CTX))
        except EngineError as error:
            raise SelfTestFailure(Step.LOAD, str(error)) from None
        finished: Finished | None = None
        try:
            # Greedy decoding: the same reply on every run, so the expected answer is fixed.
            sampling = SamplingParams(temperature=0.0, seed=0, max_tokens=SELF_TEST_MAX_TOKENS)
            for event in engine.generate([ChatMessage("user", probe.question)], sampling):
                if isinstance(event, Finished):
                    finished = event
        except EngineError as error:
            raise SelfTestFailure(Step.GENERATE, str(error)) from None
        if finished is None:
            raise SelfTestFailure(Step.GENERATE, "the engine ended the stream without a reply")
        return report, finished
    finally:
        engine.close()


def check_gui() -> str:
    """Build and show the main window and the About dialog offscreen; returns the Qt version."""
    from PySide6.QtCore import qInstallMessageHandler, qVersion

    # Qt's warnings (the offscreen platform has a few harmless ones) would break the one-line
    # output; keep them, and name the first one if the check fails.
    qt_messages: list[str] = []
    previous = qInstallMessageHandler(lambda _kind, _context, text: qt_messages.append(text))
    try:
        return _build_windows(qVersion())
    except SelfTestFailure as failure:
        if qt_messages:
            raise SelfTestFailure(
                failure.step, f"{failure.reason} (Qt said: {qt_messages[0]})"
            ) from None
        raise
    finally:
        qInstallMessageHandler(previous)


def _build_windows(qt_version: str) -> str:
    from PySide6.QtWidgets import QApplication

    from fathom_desktop.engine.scripted import FakeEngine
    from fathom_desktop.gui.about import AboutDialog
    from fathom_desktop.gui.main_window import MainWindow
    from fathom_desktop.history import History
    from fathom_desktop.settings import SettingsStore

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "fathom-desktop"])
    # A scratch settings file and history: the self-test must not touch the user's own.
    with tempfile.TemporaryDirectory(prefix="fathom-self-test-") as scratch:
        history = History(Path(scratch) / "history.sqlite3")
        window = MainWindow(FakeEngine, SettingsStore(Path(scratch) / "settings.json"), history)
        try:
            window.show()
            app.processEvents()
            if not window.isVisible() or window.grab().isNull():
                raise SelfTestFailure(Step.GUI, "the main window did not render")
            about = AboutDialog(window)
            about.show()
            app.processEvents()
            if about.grab().isNull():
                raise SelfTestFailure(Step.GUI, "the About dialog did not render")
            about.close()
            _check_formula_layout()
        finally:
            window.shutdown()
            window.close()
            history.close()
            app.processEvents()
    return qt_version


def _check_formula_layout() -> None:
    """Formulas are drawn by a child process (render/layout_process.py): this copy must be able
    to start it (in the package, the launcher runs its `-c` code) and get an image back."""
    from fathom_desktop.render.math import MathRenderer, MathStyle, TooSlow

    style = MathStyle(font_px=16, color="#000000", x_height=8, highlight="#400000ff")
    renderer = MathRenderer()
    try:
        drawn = renderer.render("\\frac{1}{2}", True, style)
    except OSError as error:
        raise SelfTestFailure(Step.GUI, f"formulas cannot be drawn ({error})") from None
    finally:
        renderer.close()
    if drawn is None or isinstance(drawn, TooSlow) or drawn.image.isNull():
        raise SelfTestFailure(Step.GUI, "the formula layout process drew nothing")


def _guarded(step: Step, action: Callable[[], T]) -> T:
    """Turn any unexpected error inside a step into that step's one-line failure."""
    try:
        return action()
    except SelfTestFailure:
        raise
    except Exception as error:  # noqa: BLE001 - the self-test reports, it never tracebacks
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise SelfTestFailure(step, f"{type(error).__name__}: {message}".rstrip(": ")) from None


def self_test(model: Path | None = None) -> SelfTestReport:
    started = time.monotonic()
    # First: without llama.cpp's library nothing else can work, and the demo conversion would
    # fail with a less helpful reason.
    backend = _guarded(Step.BACKEND, _backend_name)
    if model is None:
        path, probe = _guarded(Step.MODEL, _demo_model)
    else:
        if not model.is_file():
            raise SelfTestFailure(Step.MODEL, f"{model} is not a file")
        path, probe = model, OWN_MODEL_PROBE
    report, finished = _guarded(Step.LOAD, lambda: _generate(path, probe))
    boxed = check_reply(finished, probe)
    qt = _guarded(Step.GUI, check_gui)
    stats = finished.stats
    return SelfTestReport(
        model=path,
        load=report,
        backend=backend,
        boxed=boxed,
        reasoning_tokens=stats.reasoning_tokens,
        answer_tokens=stats.answer_tokens,
        decode_tokens_per_s=stats.decode_tokens_per_s,
        qt=qt,
        seconds=time.monotonic() - started,
    )


def run_self_test(model: Path | None = None, out: TextIO | None = None) -> int:
    """The `--self-test` entry point: one line on stdout (or `out`), and the exit status."""
    out = out or sys.stdout
    # Headless by definition, whatever display the caller has; set before Qt starts.
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    try:
        report = self_test(model)
    except SelfTestFailure as failure:
        print(f"self-test FAILED at {failure.step.value}: {failure.reason}", file=out)
        return EXIT_FAILED
    print(report.summary(), file=out)
    return EXIT_OK
