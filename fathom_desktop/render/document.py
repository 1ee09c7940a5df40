"""A QTextDocument that shows a rendered answer and never loads anything from outside.

Formulas appear as image objects. Until a formula's image has been laid out (off the GUI thread)
the object draws the formula's source in a code style; when the image arrives it is registered on
the document and the object draws it instead, so swapping one in relayouts one paragraph and moves
no text.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, QRectF, QSizeF, Qt, QUrl
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontDatabase,
    QFontInfo,
    QFontMetricsF,
    QImage,
    QPalette,
    QPyTextObject,
    QTextDocument,
    QTextFormat,
)

from fathom_desktop.render.markdown import (
    CODE_BLOCK_STYLE,
    CODE_INLINE_STYLE,
    MathSpan,
    note_html,
    to_html,
)
from fathom_desktop.render.math import (
    MAX_ANSWER_FORMULAS,
    MAX_ANSWER_WORK,
    FormulaKey,
    MathStyle,
    formula_refusal,
    formula_work,
    is_final_answer,
)
from fathom_desktop.render.pieces import Piece, PieceKind

MATH_URL_SCHEME = "fathom-math"
# Widest placeholder; a longer source is cut short with an ellipsis until its image arrives.
_PLACEHOLDER_MAX_PX = 480.0


@dataclass(frozen=True)
class PlaceholderMetrics:
    """Sizes of the code font, measured on the GUI thread for work done off it."""

    char_width: float
    line_height: float


@dataclass(frozen=True)
class FormulaRef:
    url: str
    key: FormulaKey
    source: str  # the formula as the model wrote it, with delimiters: what the placeholder shows


@dataclass
class PieceHtml:
    html: str
    formulas: list[FormulaRef] = field(default_factory=list)
    refused: int = 0  # formulas shown as source with a note


@dataclass
class AnswerBudget:
    """What is left of one answer's formula work (touched by one thread at a time)."""

    work: int = MAX_ANSWER_WORK
    formulas: int = MAX_ANSWER_FORMULAS

    def refusal(self, tex: str) -> str | None:
        refused = formula_refusal(tex)
        if refused is not None:
            return refused
        work, _ = formula_work(tex)
        if self.formulas <= 0 or work > self.work:
            return "not drawn: this answer has too many formulas"
        self.formulas -= 1
        self.work -= work
        return None


def math_style(font: QFont, palette: QPalette) -> MathStyle:
    metrics = QFontMetricsF(font)
    em_px = QFontInfo(font).pixelSize()
    text = palette.color(QPalette.ColorRole.Text)
    highlight = palette.color(QPalette.ColorRole.Highlight)
    highlight.setAlpha(60)
    return MathStyle(
        # STIX's x-height is smaller than that of typical UI sans fonts; 1.2 makes them match.
        font_px=em_px * 1.2,
        color=text.name(),
        x_height=metrics.xHeight(),
        highlight=highlight.name(highlight.NameFormat.HexArgb),
    )


def code_font(font: QFont) -> QFont:
    code = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    code.setPointSizeF(font.pointSizeF())
    return code


def placeholder_metrics(font: QFont) -> PlaceholderMetrics:
    metrics = QFontMetricsF(code_font(font))
    return PlaceholderMetrics(metrics.averageCharWidth(), metrics.height())


def piece_html(
    piece: Piece, style: MathStyle, metrics: PlaceholderMetrics, budget: AnswerBudget
) -> PieceHtml:
    """HTML for one piece of an answer. Pure Python: it may run off the GUI thread."""
    if piece.kind is PieceKind.PLAIN:
        note = note_html("a line too long to format, shown as written") + "<br/>"
        text = html.escape(piece.text.rstrip("\n"))
        return PieceHtml(f'<p style="white-space:pre-wrap">{note if piece.first else ""}{text}</p>')
    if piece.kind is PieceKind.CODE:
        lines = piece.text.rstrip("\n").split("\n")
        if lines and _closes_fence(lines[-1], piece.fence):
            lines.pop()
        code = html.escape("\n".join(lines))
        return PieceHtml(f'<pre style="{CODE_BLOCK_STYLE}">{code}</pre>' if lines else "")

    result = PieceHtml("")

    def math_html(span: MathSpan) -> str:
        delimiters = ("\\[", "\\]") if span.display else ("\\(", "\\)")
        source = delimiters[0] + span.tex + delimiters[1]
        refused = budget.refusal(span.tex)
        if refused is not None:
            result.refused += 1
            code = f'<code style="{CODE_INLINE_STYLE}">{html.escape(source)}</code>'
            return f"{code} {note_html(refused)}"
        key: FormulaKey = (span.tex, span.display, style)
        url = f"{MATH_URL_SCHEME}:{hash(key) & 0xFFFFFFFFFFFF:x}"
        result.formulas.append(FormulaRef(url, key, source))
        width = min(len(source) * metrics.char_width + 8, _PLACEHOLDER_MAX_PX)
        align = "" if span.display else ' style="vertical-align: middle"'
        title = "final answer" if is_final_answer(span.tex) else "formula"
        return (
            f'<img src="{url}" width="{width:.1f}" height="{metrics.line_height + 4:.1f}"'
            f' title="{title}"{align}/>'
        )

    result.html = to_html(piece.text, math_html)
    return result


def _closes_fence(line: str, fence: str) -> bool:
    stripped = line.strip()
    return bool(fence) and len(stripped) >= len(fence) and set(stripped) == {fence[0]}


class _FormulaObjects(QPyTextObject):
    """Draws formula images from the document's own resources and nothing else; a formula
    not laid out yet is drawn as its source.

    It replaces Qt's image handler, which falls back to reading the `src` path from disk.
    """

    def __init__(self, document: SafeDocument) -> None:
        super().__init__(document)
        self._document = document

    def intrinsicSize(self, document, position, text_format) -> QSizeF:  # noqa: N802 - Qt's
        # Called for every formula of a paragraph each time it is laid out: kept short.
        image_format = text_format.toImageFormat()
        size = self._document.sizes.get(image_format.name())
        if size is not None:
            return size
        return QSizeF(max(image_format.width(), 0.0), max(image_format.height(), 0.0))

    def drawObject(self, painter, rect, document, position, text_format) -> None:  # noqa: N802
        name = text_format.toImageFormat().name()
        image = self._document.images.get(name)
        if image is not None:
            painter.drawImage(rect, image)
            return
        source = self._document.placeholders.get(name)
        if source is None:
            return
        painter.save()
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(128, 128, 128, 38))
        painter.drawRoundedRect(rect, 2, 2)
        font = self._document.placeholder_font()
        painter.setFont(font)
        painter.setPen(self._document.text_color)
        inner = QRectF(rect).adjusted(4, 0, -4, 0)
        shown = QFontMetricsF(font).elidedText(source, Qt.TextElideMode.ElideRight, inner.width())
        painter.drawText(inner, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, shown)
        painter.restore()


class SafeDocument(QTextDocument):
    """Only images registered with addResource are shown: `<img src=file:...>` reads nothing."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # url -> formula source, drawn until the formula's image is registered
        self.placeholders: dict[str, str] = {}
        # url -> formula image, and its size: Qt asks for sizes many times per layout
        self.images: dict[str, QImage] = {}
        self.sizes: dict[str, QSizeF] = {}
        self._placeholder_font: tuple[QFont, QFont] | None = None  # (default font, code font)
        self.text_color = QColor("black")
        self._objects = _FormulaObjects(self)
        self.documentLayout().registerHandler(QTextFormat.ObjectTypes.ImageObject, self._objects)

    def add_image(self, url: str, image: QImage) -> None:
        """Registers a formula's image: it is drawn in place of its placeholder."""
        self.images[url] = image
        self.sizes[url] = image.deviceIndependentSize()
        self.addResource(QTextDocument.ResourceType.ImageResource, QUrl(url), image)

    def clear(self) -> None:
        super().clear()
        self.placeholders.clear()
        self.images.clear()
        self.sizes.clear()

    def placeholder_font(self) -> QFont:
        """The code font placeholders are drawn in (looked up once per default font)."""
        default = self.defaultFont()
        if self._placeholder_font is None or self._placeholder_font[0] != default:
            self._placeholder_font = (default, code_font(default))
        return self._placeholder_font[1]

    def loadResource(self, type: int, name: QUrl) -> object:  # noqa: A002 - Qt's signature
        return None
