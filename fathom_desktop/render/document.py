"""A QTextDocument that shows a rendered answer and never loads anything from outside."""

from __future__ import annotations

import html
from dataclasses import dataclass

from PySide6.QtCore import QObject, QSizeF, QUrl
from PySide6.QtGui import (
    QFont,
    QFontInfo,
    QFontMetricsF,
    QImage,
    QPalette,
    QPyTextObject,
    QTextDocument,
    QTextFormat,
)

from fathom_desktop.render.markdown import MathSpan, to_html
from fathom_desktop.render.math import MathRenderer, MathStyle, is_final_answer

MATH_URL_SCHEME = "fathom-math"

_shared_renderer = MathRenderer()


@dataclass(frozen=True)
class RenderSummary:
    formulas: int  # drawn as images
    unrendered: int  # shown as source because the renderer refused them


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


class _RegisteredImages(QPyTextObject):
    """Draws images from the document's own resources and nothing else.

    It replaces Qt's image handler, which falls back to reading the `src` path from disk.
    """

    def intrinsicSize(self, document, position, text_format) -> QSizeF:  # noqa: N802 - Qt's
        image_format = text_format.toImageFormat()
        return QSizeF(max(image_format.width(), 0.0), max(image_format.height(), 0.0))

    def drawObject(self, painter, rect, document, position, text_format) -> None:  # noqa: N802
        url = QUrl(text_format.toImageFormat().name())
        image = document.resource(QTextDocument.ResourceType.ImageResource, url)
        if isinstance(image, QImage) and not image.isNull():
            painter.drawImage(rect, image)


class SafeDocument(QTextDocument):
    """Only images registered with addResource are shown: `<img src=file:...>` reads nothing."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._images = _RegisteredImages(self)
        self.documentLayout().registerHandler(QTextFormat.ObjectTypes.ImageObject, self._images)

    def loadResource(self, type: int, name: QUrl) -> object:  # noqa: A002 - Qt's signature
        return None


def html_for(source: str, document: QTextDocument, style: MathStyle) -> tuple[str, RenderSummary]:
    """HTML for `source`; its formula images are registered on `document` as resources."""
    counts = {"formulas": 0, "unrendered": 0}

    def math_html(span: MathSpan) -> str:
        image = _shared_renderer.render(span.tex, span.display, style)
        if image is None:
            counts["unrendered"] += 1
            delimiters = ("\\[", "\\]") if span.display else ("\\(", "\\)")
            return f"<code>{html.escape(delimiters[0] + span.tex + delimiters[1])}</code>"
        counts["formulas"] += 1
        url = f"{MATH_URL_SCHEME}:{hash((span.tex, span.display, style)) & 0xFFFFFFFFFFFF:x}"
        document.addResource(QTextDocument.ResourceType.ImageResource, QUrl(url), image.image)
        align = ' style="vertical-align: middle"' if image.centred_on_baseline else ""
        title = "final answer" if is_final_answer(span.tex) else "formula"
        return (
            f'<img src="{url}" width="{image.width:.1f}" height="{image.height:.1f}"'
            f' alt="{html.escape(span.tex)}" title="{title}"{align}/>'
        )

    body = to_html(source, math_html)
    return body, RenderSummary(counts["formulas"], counts["unrendered"])
