"""Formulas are laid out in a child process: the window's GUI thread never runs ziamath, a formula
whose layout runs past its time is stopped for real and shown as its source with a note, and a
child that dies costs nothing but a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from fathom_desktop.gui.answer_view import AnswerView
from fathom_desktop.render import layout_process
from fathom_desktop.render.formula_image import MathStyle
from fathom_desktop.render.lanes import Ticket
from fathom_desktop.render.layout_process import MAX_FAILED_STARTS, LayoutProcess, TooSlow
from fathom_desktop.render.math import FormulaImages, formula_images, formula_refusal
from tests.conftest import PROJECT_ROOT
from tests.gui.test_render import formula_objects

WAIT_MS = 60_000
STYLE = MathStyle(font_px=16, color="#000000", x_height=8, highlight="#400000ff")


def slow_formula(variable: str) -> str:
    """Within the static bound (so it is laid out), about a second of layout on a 2-core box."""
    return "\\cfrac{1}{3+" * 7 + variable + "}" * 7


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _alive_child(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _settled(view: AnswerView) -> bool:
    return view.is_rendered() and formula_images().pending() == 0


def test_a_formula_past_its_time_is_stopped_and_shown_as_source_with_a_note(qtbot, monkeypatch):
    service = formula_images().service
    service.warm_up()
    qtbot.waitUntil(service.ready, timeout=WAIT_MS)
    first_child = service.pid
    monkeypatch.setattr(service, "timeout_s", 0.05)
    slow = slow_formula("w_{1}")
    assert formula_refusal(slow) is None  # the static bound lets it through
    view = AnswerView()
    qtbot.addWidget(view)
    view.render_source(f"First $a^2$, then $${slow}$$ and then $b_3$, so \\boxed{{5}}.")
    qtbot.waitUntil(lambda: _settled(view) and view.refused == 1, timeout=WAIT_MS)
    shown = view.toPlainText()
    assert f"\\[{slow}\\]" in shown and "took too long to draw" in shown
    assert not _alive(first_child)  # the layout was stopped, not left running
    # The formulas around it are drawn by a fresh child; the boxed answer is kept.
    qtbot.waitUntil(lambda: all(drawn for _, drawn in formula_objects(view)), timeout=WAIT_MS)
    assert [source for source, _ in formula_objects(view)] == [
        "\\(a^2\\)",
        "\\(b_3\\)",
        "\\(\\boxed{5}\\)",
    ]
    assert view.formulas == 3 and view.unrendered == 0
    # Remembered: the same formula again is shown as source at once, with no layout.
    starts = service.starts
    again = AnswerView()
    qtbot.addWidget(again)
    again.render_source(f"Again $${slow}$$ here.")
    qtbot.waitUntil(lambda: _settled(again) and again.refused == 1, timeout=WAIT_MS)
    assert "took too long to draw" in again.toPlainText() and service.starts == starts


def test_a_layout_process_killed_from_outside_costs_no_formula(qtbot):
    service = formula_images().service
    service.warm_up()
    qtbot.waitUntil(service.ready, timeout=WAIT_MS)
    os.kill(service.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not _alive_child(service.pid), timeout=WAIT_MS)
    view = AnswerView()
    qtbot.addWidget(view)
    view.render_source("After the crash: $\\sqrt{c_{9}}$.")
    qtbot.waitUntil(
        lambda: _settled(view) and formula_objects(view) == [("\\(\\sqrt{c_{9}}\\)", True)],
        timeout=WAIT_MS,
    )
    assert view.unrendered == 0


def test_the_window_process_never_loads_ziamath() -> None:
    script = (
        "import sys\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from fathom_desktop.render.math import MathRenderer, MathStyle\n"
        "style = MathStyle(font_px=16, color='#000000', x_height=8, highlight='#400000ff')\n"
        "drawn = MathRenderer().render('\\\\frac{1}{2}', False, style)\n"
        "print(drawn.width > 5, 'ziamath' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_the_packaged_launcher_runs_the_layout_process(monkeypatch) -> None:
    launcher = PROJECT_ROOT / "packaging" / "launcher.py"
    # Frozen, sys.executable is the launcher itself; here Python runs the launcher's file.
    monkeypatch.setattr(layout_process, "interpreter", lambda: [sys.executable, str(launcher)])
    process = LayoutProcess()
    try:
        drawn = process.draw("\\frac{a}{b}", True, STYLE)
    finally:
        process.close()
    assert drawn is not None and not isinstance(drawn, TooSlow)
    assert drawn.width > 10 and not drawn.image.isNull()


def test_the_waiting_client_stops_a_slow_formula_too() -> None:
    process = LayoutProcess(timeout_s=0.05)
    try:
        assert isinstance(process.draw(slow_formula("v"), True, STYLE), TooSlow)
        drawn = process.draw("x+1", False, STYLE)  # a fresh child takes the next one
        assert drawn is not None and not isinstance(drawn, TooSlow)
    finally:
        process.close()


def test_a_layout_process_that_cannot_start_leaves_formulas_as_source(qtbot, monkeypatch):
    # A packaged app whose launcher did not know the layout code: the child exits at once.
    monkeypatch.setattr(layout_process, "interpreter", lambda: [sys.executable, "-c", "", "--"])
    images = FormulaImages()
    drawn: list[object] = []
    for index in range(5):
        key = (f"y_{{{index}}}", False, STYLE)
        images.request(key, Ticket(), drawn.append)
    qtbot.waitUntil(lambda: len(drawn) == 5, timeout=WAIT_MS)
    assert drawn == [None] * 5  # each shows its source, as a formula ziamath cannot parse
    # It gave up after a few starts rather than starting a process for every formula.
    assert images.service.starts == MAX_FAILED_STARTS
