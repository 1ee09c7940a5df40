"""LaTeX to images: ziamath lays the formula out as SVG (pure Python, its own STIX math font)
in the formula layout process (render/layout_process.py), and QtSvg paints the SVG into a QImage
that a QTextDocument can show inline.

No browser engine and no TeX installation are involved; the three pure-Python packages add about
4 MB. A formula ziamath cannot parse yields None and the caller shows its source instead; one
whose layout runs past its time yields TooSlow, and the caller shows its source with a note.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from fathom_desktop.render.formula_image import MathImage, MathStyle, is_final_answer
from fathom_desktop.render.lanes import Ticket
from fathom_desktop.render.layout_process import Drawn, LayoutProcess, LayoutService, TooSlow

__all__ = [
    "Drawn",
    "FormulaImages",
    "MathImage",
    "MathRenderer",
    "MathStyle",
    "TooSlow",
    "formula_images",
    "formula_refusal",
    "formula_work",
    "is_final_answer",
    "start_warm_up",
]

# Formulas remembered (their images, or that they could not be drawn), and the most image bytes
# kept for them: an answer's images are held by its document anyway, this spares the layouts.
_CACHE_SIZE = 2_048
_CACHE_BYTES = 64 << 20


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
    """Lays formulas out and waits for them, remembering recent ones: for code that may block
    (the self-test, tests). The window uses FormulaImages."""

    def __init__(self) -> None:
        self._cache: OrderedDict[FormulaKey, Drawn] = OrderedDict()
        self._process = LayoutProcess()

    def render(self, tex: str, display: bool, style: MathStyle) -> Drawn:
        key = (tex, display, style)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        image = self._process.draw(tex, display, style)
        self._cache[key] = image
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return image

    def close(self) -> None:
        self._process.close()


FormulaKey = tuple[str, bool, MathStyle]
Deliver = Callable[[Drawn], None]


class FormulaImages:
    """Formula images from the layout process, cached by (tex, display, style).

    `request` hands the image to its callback on the GUI thread: at once when cached, later
    otherwise. Formulas are laid out newest first (the formulas just streamed, or those of the
    answer at the bottom of a conversation just opened, are the ones on screen); one whose
    answers were all closed before its turn (their tickets cancelled) is skipped.
    """

    def __init__(self) -> None:
        self._cache: OrderedDict[FormulaKey, Drawn] = OrderedDict()
        self._cache_bytes = 0
        self._waiting: dict[FormulaKey, list[tuple[Ticket, Deliver]]] = {}
        self._queue: list[FormulaKey] = []  # not sent yet; the last is the newest
        self._service = LayoutService(self._arrived)

    @property
    def service(self) -> LayoutService:
        return self._service

    def warm_up(self) -> None:
        self._service.warm_up()

    def cached(self, key: FormulaKey) -> Drawn | Literal[False]:
        """What became of the formula (see Drawn), or False when not laid out yet."""
        if key not in self._cache:
            return False
        self._cache.move_to_end(key)
        return self._cache[key]

    def pending(self) -> int:
        """Formulas asked for and not laid out yet."""
        return len(self._waiting)

    def request(self, key: FormulaKey, ticket: Ticket, deliver: Deliver) -> None:
        found = self.cached(key)
        if found is not False:
            deliver(found)
            return
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append((ticket, deliver))
            return
        self._waiting[key] = [(ticket, deliver)]
        self._queue.append(key)
        self._next()

    def _next(self) -> None:
        while self._queue and self._service.idle():
            key = self._queue.pop()
            if any(ticket.wanted() for ticket, _ in self._waiting.get(key, ())):
                self._service.lay_out(key, *key)
            else:
                self._waiting.pop(key, None)  # every answer that wanted it was closed

    def _arrived(self, key: FormulaKey, drawn: Drawn) -> None:
        # Too slow once is too slow again: kept, so that it is not laid out (and killed) twice.
        self._cache[key] = drawn
        self._cache_bytes += _bytes(drawn)
        while len(self._cache) > _CACHE_SIZE or self._cache_bytes > _CACHE_BYTES:
            self._cache_bytes -= _bytes(self._cache.popitem(last=False)[1])
        for ticket, deliver in self._waiting.pop(key, []):
            if ticket.wanted():
                deliver(drawn)
        self._next()


def _bytes(drawn: Drawn) -> int:
    return drawn.image.sizeInBytes() if isinstance(drawn, MathImage) else 0


_formula_images: FormulaImages | None = None


def formula_images() -> FormulaImages:
    """The process's formula images (created on the GUI thread, on first use)."""
    global _formula_images
    if _formula_images is None:
        _formula_images = FormulaImages()
    return _formula_images


def start_warm_up() -> None:
    """Start the formula layout process now (on the GUI thread; it returns at once).

    The first formula otherwise waits about half a second for it (Python, ziamath and its font
    tables), typically at the end of the first answer.
    """
    formula_images().warm_up()
