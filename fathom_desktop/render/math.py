"""LaTeX to images: ziamath lays the formula out as SVG (pure Python, its own STIX math font),
QtSvg paints it into a QImage that a QTextDocument can show inline.

No browser engine and no TeX installation are involved; the three pure-Python packages add about
4 MB. A formula ziamath cannot parse yields None and the caller shows its source instead.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

from fathom_desktop.render.lanes import BackgroundLane, NoResult, Ticket

log = logging.getLogger(__name__)

_VIEWBOX = re.compile(r'viewBox="([-\d.e]+) ([-\d.e]+) ([-\d.e]+) ([-\d.e]+)"')
_CACHE_SIZE = 512
# ziamath keeps module-level font caches; one caller at a time (the layout lane, the warm-up).
_ziamath_lock = threading.Lock()
_warm_up_started = False


@dataclass(frozen=True)
class MathStyle:
    font_px: float  # size of the surrounding text, in logical pixels
    color: str  # "#rrggbb"
    # Where Qt centres an inline object (AlignMiddle) is half the x-height above the baseline;
    # the image is padded so that the formula's own baseline lands on the text baseline.
    x_height: float
    # Background behind formulas holding \boxed{}, so the final answer stands out.
    highlight: str
    device_pixel_ratio: float = 2.0


@dataclass(frozen=True)
class MathImage:
    image: QImage
    width: float  # logical pixels
    height: float
    # True when the image is padded for Qt's AlignMiddle (inline formulas).
    centred_on_baseline: bool


def is_final_answer(tex: str) -> bool:
    return "\\boxed" in tex


# ziamath lays out every group of a formula about twice per level of nesting, so its time
# doubles with each level (measured: a 9-level \cfrac 1.2 s, x^{x^{...}} ten deep 0.7 s) while a
# flat formula costs well under a millisecond per character. A formula's work is estimated as
# the sum over its characters of 2 ** (groups around it); one estimated above the limit, nested
# deeper or longer than the others, is shown as its source with a note instead.
MAX_FORMULA_CHARS = 2_000
MAX_FORMULA_DEPTH = 12
MAX_FORMULA_WORK = 4_096  # about half a second of layout on the 2-core development box
# All the formulas of one answer: about a minute of background layout at most.
MAX_ANSWER_WORK = 400_000
MAX_ANSWER_FORMULAS = 2_000

_GROUP_OPEN = re.compile(r"\\left\b|\\begin\b|\{")
_GROUP_CLOSE = re.compile(r"\\right\b|\\end\b|\}")
_GROUP_MARK = re.compile(r"\\left\b|\\begin\b|\\right\b|\\end\b|\\.|[{}]")


def formula_work(tex: str) -> tuple[int, int]:
    """(estimated layout work, deepest nesting) of a formula, in one pass over it."""
    work = depth = deepest = 0
    last = 0
    for mark in _GROUP_MARK.finditer(tex):
        work += (mark.start() - last) << min(depth, 40)
        last = mark.end()
        text = mark.group(0)
        if text in ("{", "\\left", "\\begin"):
            depth += 1
            deepest = max(deepest, depth)
        elif text in ("}", "\\right", "\\end"):
            depth = max(depth - 1, 0)
        work += len(text) << min(depth, 40)
    work += (len(tex) - last) << min(depth, 40)
    return work, deepest


def formula_refusal(tex: str) -> str | None:
    """Why a formula is not drawn, or None when it may be laid out."""
    if len(tex) > MAX_FORMULA_CHARS:
        return "too long to draw"
    work, deepest = formula_work(tex)
    if deepest > MAX_FORMULA_DEPTH or work > MAX_FORMULA_WORK:
        return "nested too deeply to draw"
    return None


class MathRenderer:
    """Renders formulas where it is called, remembering recent ones."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, bool, MathStyle], MathImage | None] = OrderedDict()

    def render(self, tex: str, display: bool, style: MathStyle) -> MathImage | None:
        key = (tex, display, style)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        image = _render(tex, display, style)
        self._cache[key] = image
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return image


FormulaKey = tuple[str, bool, MathStyle]


class FormulaImages:
    """Formula images laid out on a background lane, cached by (tex, display, style).

    `request` hands the image to its callback on the GUI thread: at once when cached, later
    otherwise. A request whose ticket is cancelled before its turn (the answer showing it was
    closed) is skipped.
    """

    def __init__(self, lane: BackgroundLane) -> None:
        self._lane = lane
        self._cache: OrderedDict[FormulaKey, MathImage | None] = OrderedDict()
        self._waiting: dict[FormulaKey, list[tuple[Ticket, Callable[[MathImage | None], None]]]]
        self._waiting = {}

    def cached(self, key: FormulaKey) -> MathImage | None | Literal[False]:
        """The image (None: ziamath cannot draw it), or False when not laid out yet."""
        if key not in self._cache:
            return False
        self._cache.move_to_end(key)
        return self._cache[key]

    def pending(self) -> int:
        """Formulas asked for and not laid out yet."""
        return len(self._waiting)

    def request(
        self, key: FormulaKey, ticket: Ticket, deliver: Callable[[MathImage | None], None]
    ) -> None:
        found = self.cached(key)
        if found is not False:
            deliver(found)
            return
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append((ticket, deliver))
            return
        self._waiting[key] = [(ticket, deliver)]
        # The lane reads the waiters' tickets: a job nobody waits for any more is skipped.
        job_ticket = _AnyTicket(self._waiting[key])
        self._lane.submit(
            lambda: _render(*key), lambda image: self._arrived(key, image), job_ticket
        )

    def _arrived(self, key: FormulaKey, image: MathImage | None | NoResult) -> None:
        waiters = self._waiting.pop(key, [])
        if isinstance(image, NoResult) and image.reason == "cancelled":
            return
        drawn = image if isinstance(image, MathImage) else None
        self._cache[key] = drawn
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        for ticket, deliver in waiters:
            if ticket.wanted():
                deliver(drawn)


class _AnyTicket(Ticket):
    """Wanted while any of the answers waiting for one formula is."""

    def __init__(self, waiters: list[tuple[Ticket, Callable[[MathImage | None], None]]]) -> None:
        super().__init__()
        self._waiters = waiters

    def wanted(self) -> bool:
        # Read on the lane's thread while the GUI may append: a copy is a consistent snapshot.
        return any(ticket.wanted() for ticket, _ in list(self._waiters))


_formula_images: FormulaImages | None = None


def formula_images() -> FormulaImages:
    """The process's formula images (created on the GUI thread, on first use)."""
    global _formula_images
    if _formula_images is None:
        # Newest first: the formulas just streamed, or those of the answer at the bottom of a
        # conversation just opened, are the ones on screen.
        _formula_images = FormulaImages(BackgroundLane("formula-layout", newest_first=True))
    return _formula_images


def start_warm_up() -> None:
    """Load ziamath and its font in a background thread, once per process.

    The first formula otherwise costs the GUI thread about half a second, typically at the end of
    the first answer. This is pure Python (no Qt objects), so it may run off the GUI thread.
    """
    global _warm_up_started
    if _warm_up_started:
        return
    _warm_up_started = True
    style = MathStyle(font_px=16, color="#000000", x_height=8, highlight="#00000000")
    threading.Thread(
        target=_svg, args=("\\frac{1}{2}", True, style), name="math-warm-up", daemon=True
    ).start()


def _svg(tex: str, display: bool, style: MathStyle) -> str | None:
    size = style.font_px * (1.1 if display else 1.0)
    with _ziamath_lock:
        import ziamath  # imported late: it loads its font tables (~0.5 s) on first use

        # SVG 1.1: QtSvg draws SVG Tiny, which has no <symbol>, so SVG 2 glyphs come out blank.
        ziamath.config.svg2 = False
        try:
            return ziamath.Latex(tex, size=size, color=style.color, inline=not display).svg()
        except Exception as error:  # ziamath raises many kinds on TeX it does not know
            log.info("cannot render formula %r: %s", tex, error)
            return None


def _render(tex: str, display: bool, style: MathStyle) -> MathImage | None:
    svg = _svg(tex, display, style)
    if svg is None:
        return None
    box = _VIEWBOX.search(svg)
    renderer = QSvgRenderer(QByteArray(svg.encode("utf-8")))
    if box is None or not renderer.isValid():
        return None
    _, min_y, width, height = (float(value) for value in box.groups())
    ascent = -min_y  # ziamath puts the baseline at y = 0
    descent = height - ascent
    pad_top = pad_bottom = 0.0
    if not display:
        # Pad so that ascent - descent equals the x-height: AlignMiddle then puts the baseline
        # on the text's baseline.
        padded_ascent = max(ascent, descent + style.x_height)
        padded_descent = padded_ascent - style.x_height
        pad_top, pad_bottom = padded_ascent - ascent, padded_descent - descent
    margin = 2.0 if is_final_answer(tex) else 0.0
    logical_w = width + 2 * margin
    logical_h = height + pad_top + pad_bottom + 2 * margin

    ratio = style.device_pixel_ratio
    image = QImage(
        math.ceil(logical_w * ratio),
        math.ceil(logical_h * ratio),
        QImage.Format.Format_ARGB32_Premultiplied,
    )
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.scale(ratio, ratio)
    if margin:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(style.highlight))
        painter.drawRoundedRect(QRectF(0, pad_top, logical_w, height + 2 * margin), 3, 3)
    renderer.render(painter, QRectF(margin, pad_top + margin, width, height))
    painter.end()
    image.setDevicePixelRatio(ratio)
    return MathImage(image, logical_w, logical_h, centred_on_baseline=not display)
