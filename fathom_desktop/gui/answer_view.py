"""The answer: rendered piece by piece, with a budget for the GUI thread.

The answer is cut into pieces (`render.pieces`) as it streams; each piece is rendered once and
appended, and the text not settled into a piece yet is shown as plain text after them. A finished
answer renders only what was still unsettled; one opened from history goes through the same
pieces. Work on the GUI thread happens in slices of about SLICE_BUDGET_S: a piece that might be
slow to parse is parsed on a background lane, and formula images are laid out on another
(`render.math.FormulaImages`) and swapped in for their placeholders as they arrive.
"""

from __future__ import annotations

import html
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass
from functools import partial

import shiboken6
from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import (
    QGuiApplication,
    QPalette,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextDocumentFragment,
)
from PySide6.QtWidgets import QFrame, QSizePolicy, QTextEdit, QWidget

from fathom_desktop.render import (
    AnswerBudget,
    Piece,
    PieceHtml,
    PieceKind,
    PieceSplitter,
    SafeDocument,
    answer_to_text,
    math_style,
    piece_html,
    placeholder_metrics,
)
from fathom_desktop.render.document import FormulaRef
from fathom_desktop.render.lanes import BackgroundLane, Ticket
from fathom_desktop.render.layout_process import TooSlow
from fathom_desktop.render.markdown import CODE_INLINE_STYLE, note_html
from fathom_desktop.render.math import Drawn, MathImage, formula_images

# GUI-thread time one event-loop pass may spend rendering answers (all of them together); one
# piece more may start before it runs out, so a pass stays within a 60 Hz frame.
SLICE_BUDGET_S = 0.006
# Pieces parsed on the GUI thread: markdown-it's time grows faster than linearly with unmatched
# link and emphasis marks, so a piece that is long or has many of them goes to a lane.
SYNC_PARSE_CHARS = 1_500
SYNC_PARSE_MARKS = 60
_MARKS = "[]*_`!<"
# Characters of an answer handed to the splitter at a time (an answer opened from history).
FEED_CHARS = 4_000
# Formula images swapped in per step of the work loop.
IMAGES_PER_STEP = 4
# Most of the unrendered rest shown as plain text: Qt lays out a paragraph whole on each change.
MAX_TAIL_CHARS = 8_000


class AutoHeightText(QTextEdit):
    """A read-only text view as tall as its document, for use inside the transcript's scroll."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDocument(SafeDocument(self))
        self.setReadOnly(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.viewport().setAutoFillBackground(False)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        # Selectable, but nothing in it is a link that can be followed.
        self.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self._fit()

    def _fit(self, *_args: object) -> None:
        height = math.ceil(self.document().size().height()) + 2 * self.frameWidth() + 2
        if height != self.height():
            self.setFixedHeight(height)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(super().sizeHint().width(), self.height())


class _SliceClock:
    """Measures the rendering time of the current event-loop pass."""

    def __init__(self) -> None:
        self._started: float | None = None

    def left(self) -> bool:
        now = time.perf_counter()
        if self._started is None:
            self._started = now
            QTimer.singleShot(0, self._end)  # runs when control is back in the event loop
        return now - self._started < SLICE_BUDGET_S

    def _end(self) -> None:
        self._started = None


_clock = _SliceClock()


class _Scheduler:
    """Gives the answers with work left the event loop's passes, newest answer first: it is the
    one being streamed, or the one at the bottom of a conversation just opened."""

    def __init__(self) -> None:
        self._waiting: dict[int, AnswerView] = {}
        self._scheduled = False

    def want(self, view: AnswerView) -> None:
        self._waiting[view.serial] = view
        if not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self._run)

    def wants(self, view: AnswerView) -> bool:
        return view.serial in self._waiting

    def _run(self) -> None:
        self._scheduled = False
        for serial in sorted(self._waiting, reverse=True):
            if not _clock.left():
                break
            view = self._waiting.pop(serial)
            if shiboken6.isValid(view):
                view._pump()
        if self._waiting and not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self._run)


_scheduler = _Scheduler()


class _ClipboardCopies:
    """Answers converted to plain text on a lane, then put on the clipboard.

    Converting is a Markdown parse of the whole answer, and markdown-it's time grows faster than
    linearly with unmatched brackets and emphasis marks (an answer of 20,000 `![` took a second
    and more). A copy that arrives after anything else was put on the clipboard (Copy LaTeX, the
    reasoning, another program) is dropped: the later copy is the one the user meant.
    """

    def __init__(self) -> None:
        self._changes = 0
        self._watching = False
        self._lane: BackgroundLane | None = None

    def copy_later(self, source: str) -> None:
        clipboard = QGuiApplication.clipboard()
        if not self._watching:
            self._watching = True
            clipboard.dataChanged.connect(self._changed)
        if self._lane is None:
            self._lane = BackgroundLane("answer-copy")
        mark = self._changes
        self._lane.submit(partial(answer_to_text, source), partial(self._converted, mark, source))

    def _changed(self) -> None:
        self._changes += 1

    def _converted(self, mark: int, source: str, text: object) -> None:
        if mark != self._changes:
            return
        # Should the conversion fail, the answer as written is still the answer.
        QGuiApplication.clipboard().setText(text if isinstance(text, str) else source)


_clipboard_copies = _ClipboardCopies()
_serials = itertools.count()
_markdown_lane: BackgroundLane | None = None
_parse_document: SafeDocument | None = None


def _parsed_html(body: str) -> QTextDocument:
    """`body` as a document (reused: making one costs more than parsing a piece)."""
    global _parse_document
    if _parse_document is None:
        _parse_document = SafeDocument()
    _parse_document.setHtml(body)
    return _parse_document


def _lane() -> BackgroundLane:
    global _markdown_lane
    if _markdown_lane is None:
        _markdown_lane = BackgroundLane("markdown-parse")
    return _markdown_lane


@dataclass
class _Pending:
    piece: Piece
    html: PieceHtml | None = None
    submitted: bool = False


def _cancel_all(tickets: list[Ticket]) -> None:
    for ticket in tickets:
        ticket.cancel()


class AnswerView(AutoHeightText):
    """The answer: rendered piece by piece while it streams, the rest when it is done."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("answerText")
        self.serial = next(_serials)
        self._tickets: list[Ticket] = []
        # Jobs still queued for a closed answer are skipped.
        self.destroyed.connect(partial(_cancel_all, self._tickets))
        self.document().text_color = self.palette().color(QPalette.ColorRole.Text)
        self._start_over("")

    def _start_over(self, source: str) -> None:
        _cancel_all(self._tickets)
        self._ticket = Ticket()
        self._tickets.append(self._ticket)
        self.source = source
        self.formulas = 0  # shown as images, or as placeholders until their image arrives
        self.refused = 0  # shown as source with a note (too deep, too long, too many)
        self.unrendered = 0  # ziamath could not draw them: their source stays
        self._splitter = PieceSplitter()
        self._fed = 0  # characters of `source` given to the splitter
        self._finished = False  # the answer is complete
        self._split_done = False
        self._pending: deque[_Pending] = deque()
        self._rendered_upto = 0  # characters of `source` shown rendered
        self._tail_start = -1  # document position of the plain, unrendered tail; -1: none
        self._tail_end = 0  # characters of `source` the tail shows up to
        self._tail_rebuilt = False
        self._streamed = False  # some of it arrived by append_stream (a tail is shown)
        self._closed = False
        self._budget = AnswerBudget()
        self._positions: dict[str, list[int]] = {}  # formula url -> its objects' positions
        self._arrived: dict[str, MathImage] = {}  # laid out, not swapped in yet

    # -- feeding ----------------------------------------------------------------------------

    def append_stream(self, text: str) -> None:
        self._streamed = True
        self.source += text
        if self._fed == len(self.source) - len(text):
            # Cheap and linear, so done at once even when this pass's budget is spent.
            self._pending.extend(_Pending(piece) for piece in self._splitter.feed(text))
            self._fed = len(self.source)
        self._tail_rebuilt = False
        shown_up_to = len(self.source) - len(text)
        self._pump()
        if not self._tail_rebuilt:
            if self._tail_start < 0:
                self._tail_end = self._rendered_upto
            if self._tail_end == shown_up_to:  # else the tail is cut short: it shows later
                room = MAX_TAIL_CHARS - (self._tail_end - self._rendered_upto)
                self._append_tail(text[: max(room, 0)])

    def render_source(self, source: str | None = None) -> None:
        """The answer is complete (the model finished, or it came from history): render what
        is not rendered yet."""
        if source is None:
            source = self.source
        if self._finished and source == self.source:
            return
        if self._finished or not source.startswith(self.source):
            self.document().clear()
            self._start_over(source)
        self.source = source
        self._finished = True
        if self._streamed:
            # What is left of a streamed answer is at most a piece or two: finishing it at once
            # (in a budget of its own) shows the whole answer rendered when the reply ends.
            self._pump(time.perf_counter() + SLICE_BUDGET_S)
        else:
            self._pump()

    def is_rendered(self) -> bool:
        """Every piece of a complete answer is in the document (formula images may be due)."""
        return self._closed

    def is_busy(self) -> bool:
        """Pieces that have settled are still waiting to be shown."""
        return bool(self._pending) or _scheduler.wants(self) or self._fed < len(self.source)

    def plain_text(self) -> str:
        """The answer as plain text, converted here (it may take long: see copy_to_clipboard)."""
        return answer_to_text(self.source)

    def copy_to_clipboard(self) -> None:
        """Put the answer on the clipboard as plain text, converted off the GUI thread."""
        _clipboard_copies.copy_later(self.source)

    # -- the work loop ------------------------------------------------------------------------

    def _pump(self, deadline: float | None = None) -> None:
        if not shiboken6.isValid(self):
            return
        while _clock.left() if deadline is None else time.perf_counter() < deadline:
            if self._arrived:
                self._swap_in_images()
                continue
            if self._fed < len(self.source):
                chunk = self.source[self._fed : self._fed + FEED_CHARS]
                self._fed += len(chunk)
                self._pending.extend(_Pending(piece) for piece in self._splitter.feed(chunk))
                continue
            if self._finished and not self._split_done:
                self._split_done = True
                self._pending.extend(_Pending(piece) for piece in self._splitter.finish())
                continue
            if not self._pending:
                break
            head = self._pending[0]
            if head.html is None:
                if head.submitted:
                    break  # its lane calls back
                if _parse_here(head.piece):
                    head.html = self._html(head.piece)
                    continue
                self._submit(head)
                break
            self._pending.popleft()
            self._insert(head)
        if self._tail_start < 0 and self._streamed and self._rendered_upto < len(self.source):
            self._show_tail()
        if self._can_progress():
            _scheduler.want(self)
        elif self._finished and self._split_done and not self._pending and not self._closed:
            self._close_document()

    def _can_progress(self) -> bool:
        """Work is left that does not wait for a lane."""
        if self._arrived:
            return True
        if self._fed < len(self.source) or (self._finished and not self._split_done):
            return True
        if not self._pending:
            return False
        head = self._pending[0]
        return head.html is not None or not head.submitted

    def _html(self, piece: Piece) -> PieceHtml:
        return piece_html(piece, self._math_style(), placeholder_metrics(self.font()), self._budget)

    def _math_style(self):
        return math_style(self.font(), self.palette())

    def _submit(self, item: _Pending) -> None:
        item.submitted = True
        work = partial(
            piece_html,
            item.piece,
            self._math_style(),
            placeholder_metrics(self.font()),
            self._budget,
        )
        _lane().submit(work, partial(self._parsed, self._ticket, item), self._ticket)

    def _parsed(self, ticket: Ticket, item: _Pending, result: object) -> None:
        if not ticket.wanted() or not shiboken6.isValid(self):
            return
        if isinstance(result, PieceHtml):
            item.html = result
        else:  # the parser failed on it: the piece is still shown, as written
            item.html = _as_written(item.piece)
        self._pump()

    # -- the document -------------------------------------------------------------------------

    def _insert(self, item: _Pending) -> None:
        rendered = item.html
        assert rendered is not None
        document = self.document()
        # The piece's text leaves the plain tail; the rest of the tail stays where it is.
        tail_left = self._take_from_tail(item.piece.end)
        images = formula_images()
        waiting: list[FormulaRef] = []
        for formula in rendered.formulas:
            document.placeholders[formula.url] = formula.source
            image = images.cached(formula.key)
            if isinstance(image, MathImage):
                document.add_image(formula.url, image.image)
            elif image is None:
                self.unrendered += 1
            else:  # not laid out yet, or too slow (replaced by its source once recorded)
                waiting.append(formula)
        if rendered.html:
            cursor = QTextCursor(document)
            if tail_left:
                # Split the tail's block: the piece goes into the empty block in front.
                cursor.setPosition(self._tail_start)
                cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
                cursor.setPosition(self._tail_start)
            else:
                cursor.movePosition(QTextCursor.MoveOperation.End)
                if document.lastBlock().length() > 1:
                    # A fresh block, not a copy of the last one (a list item, or centred).
                    cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
            start = cursor.position()
            parsed = _parsed_html(rendered.html)
            cursor.insertFragment(QTextDocumentFragment(parsed))
            start = self._fix_first_inserted_block(start, parsed)
            # The cursor has followed the edits: it is at the end of the piece.
            if tail_left:
                self._tail_start = cursor.block().next().position()
            if rendered.formulas:
                self._record_formulas(start, cursor.position())
        self._rendered_upto = item.piece.end
        self.formulas += len(rendered.formulas)
        self.refused += rendered.refused
        for formula in waiting:
            images.request(
                formula.key, self._ticket, partial(self._formula_ready, self._ticket, formula.url)
            )

    def _take_from_tail(self, upto: int) -> bool:
        """Removes the shown text of source[rendered_upto:upto] from the front of the plain
        tail; returns whether some tail is left."""
        if self._tail_start < 0:
            return False
        if upto >= self._tail_end:
            self._remove_tail()
            return False
        cursor = QTextCursor(self.document())
        cursor.setPosition(self._tail_start)
        shown = _utf16_length(self.source[self._rendered_upto : upto])
        cursor.setPosition(self._tail_start + shown, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        return True

    def _fix_first_inserted_block(self, start: int, parsed: QTextDocument) -> int:
        """Qt merges an inserted fragment's first paragraph into the (empty) block at the
        cursor and keeps that block's format: give the paragraph its own back (a centred
        formula), or drop the empty block left in front of a list. Returns where the inserted
        content starts."""
        document = self.document()
        first = document.findBlock(start)
        if not first.text() and first.next().isValid() and first.next().position() > start:
            QTextCursor(first).deleteChar()
            return start
        QTextCursor(first).setBlockFormat(parsed.firstBlock().blockFormat())
        return start

    def _record_formulas(self, start: int, end: int) -> None:
        """Where the formula objects just inserted are, so that their images can be swapped in
        without touching anything else."""
        block = self.document().findBlock(start)
        while block.isValid() and block.position() <= end:
            fragments = block.begin()
            while not fragments.atEnd():
                fragment = fragments.fragment()
                char_format = fragment.charFormat()
                if char_format.isImageFormat():
                    url = char_format.toImageFormat().name()
                    first = fragment.position()
                    positions = self._positions.setdefault(url, [])
                    positions.extend(range(first, first + fragment.length()))
                fragments += 1
            block = block.next()

    def _formula_ready(self, ticket: Ticket, url: str, image: Drawn) -> None:
        if not ticket.wanted() or not shiboken6.isValid(self):
            return
        if image is None:
            self.unrendered += 1  # its placeholder, the source, stays
            return
        if isinstance(image, TooSlow):
            self._show_as_source(url)
            return
        # Swapped in by the work loop, a few at a time: each one relayouts its paragraph.
        self._arrived[url] = image
        if not _scheduler.wants(self):
            _scheduler.want(self)

    def _show_as_source(self, url: str) -> None:
        """A formula whose layout was given up on: its objects become its source, in a code
        style with a note, as text (it wraps, and it can be selected and copied)."""
        positions = sorted(self._positions.pop(url, ()), reverse=True)
        source = self.document().placeholders.get(url, "")
        shown = (
            f'<code style="{CODE_INLINE_STYLE}">{html.escape(source)}</code>'
            f"&nbsp;{note_html('took too long to draw')}"
        )
        for position in positions:
            cursor = QTextCursor(self.document())
            cursor.setPosition(position)
            cursor.setPosition(position + 1, QTextCursor.MoveMode.KeepAnchor)
            cursor.insertHtml(shown)
            grown = cursor.position() - position - 1
            # Everything recorded after it moved along with the text.
            for others in self._positions.values():
                others[:] = [p + grown if p > position else p for p in others]
            if self._tail_start > position:
                self._tail_start += grown
        self.formulas -= len(positions)
        self.refused += len(positions)

    def _swap_in_images(self) -> None:
        document = self.document()
        dirty: dict[int, int] = {}  # block position -> length: each paragraph relayouts once
        for _ in range(IMAGES_PER_STEP):
            if not self._arrived:
                break
            url, image = next(iter(self._arrived.items()))
            del self._arrived[url]
            document.add_image(url, image.image)
            for position in self._positions.get(url, ()):
                block = document.findBlock(position)
                dirty[block.position()] = block.length()
        for start, length in dirty.items():
            document.markContentsDirty(start, length)
        # Lay out now, inside this pass's budget, rather than when the pass is already over.
        document.documentLayout().documentSize()

    def _append_tail(self, text: str) -> None:
        if not text:
            return
        document = self.document()
        cursor = QTextCursor(document)
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if self._tail_start < 0:
            if document.lastBlock().length() > 1:
                cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
            self._tail_start = cursor.position()
        # A lone "\r" or "\r\n" would become a paragraph break of another length than the
        # text: shown as a space, the tail stays character for character what it shows.
        cursor.insertText(text.replace("\r", " "), QTextCharFormat())
        self._tail_end += len(text)

    def _show_tail(self) -> None:
        self._tail_rebuilt = True
        self._tail_end = self._rendered_upto
        self._append_tail(self.source[self._rendered_upto : self._rendered_upto + MAX_TAIL_CHARS])

    def _remove_tail(self) -> None:
        if self._tail_start < 0:
            return
        cursor = QTextCursor(self.document())
        cursor.setPosition(self._tail_start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        self._tail_start = -1
        self._tail_rebuilt = True

    def _close_document(self) -> None:
        """The answer is all in: drop the plain tail's empty block if one is left."""
        self._closed = True
        self._remove_tail()
        document = self.document()
        last = document.lastBlock()
        if document.blockCount() > 1 and last.length() == 1:
            cursor = QTextCursor(document)
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.deletePreviousChar()

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        self.document().text_color = self.palette().color(QPalette.ColorRole.Text)


def _utf16_length(text: str) -> int:
    """Length as Qt counts it: characters outside the BMP take two."""
    return len(text.encode("utf-16-le")) // 2


def _parse_here(piece: Piece) -> bool:
    """Whether a piece is cheap enough to parse on the GUI thread."""
    if piece.kind is not PieceKind.MARKDOWN:
        return True  # escaped as it is
    text = piece.text
    return len(text) <= SYNC_PARSE_CHARS and sum(map(text.count, _MARKS)) <= SYNC_PARSE_MARKS


def _as_written(piece: Piece) -> PieceHtml:
    text = html.escape(piece.text.rstrip("\n"))
    return PieceHtml(f'<p style="white-space:pre-wrap">{text}</p>')
