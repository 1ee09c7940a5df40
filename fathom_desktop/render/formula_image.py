"""A formula's SVG (from ziamath) painted into an image, and that image as bytes on a pipe.

The formula layout process (render/layout_host.py) paints here, so that the window receives
finished pixels and spends a copy on each formula, not an SVG parse and a paint. QImage, QPainter
and QSvgRenderer need no QGuiApplication: ziamath draws glyphs as paths, so no font is involved.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

_VIEWBOX = re.compile(r'viewBox="([-\d.e]+) ([-\d.e]+) ([-\d.e]+) ([-\d.e]+)"')
# Larger images are not drawn (the source stays): a formula this large is not read as a picture.
MAX_IMAGE_SIDE = 16_384  # device pixels
MAX_IMAGE_AREA = 1 << 22  # device pixels: 16 MB of image
MAX_IMAGE_BYTES = 4 * MAX_IMAGE_AREA + 64
_FORMAT = QImage.Format.Format_ARGB32_Premultiplied
# device width, device height, logical width, logical height, centred on the baseline
_HEADER = struct.Struct("!IIdd?")


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

    def svg_size(self, display: bool) -> float:
        return self.font_px * (1.1 if display else 1.0)


@dataclass(frozen=True)
class MathImage:
    image: QImage
    width: float  # logical pixels
    height: float
    # True when the image is padded for Qt's AlignMiddle (inline formulas).
    centred_on_baseline: bool


def is_final_answer(tex: str) -> bool:
    return "\\boxed" in tex


def draw(svg: str, tex: str, display: bool, style: MathStyle) -> MathImage | None:
    """The formula's image, or None when the SVG is not one QtSvg draws (or is too large)."""
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
    pixels_w, pixels_h = math.ceil(logical_w * ratio), math.ceil(logical_h * ratio)
    if not _plausible(pixels_w, pixels_h):
        return None
    image = QImage(pixels_w, pixels_h, _FORMAT)
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


def to_bytes(drawn: MathImage) -> bytes:
    image = drawn.image
    header = _HEADER.pack(
        image.width(), image.height(), drawn.width, drawn.height, drawn.centred_on_baseline
    )
    return header + bytes(image.constBits())


def from_bytes(data: bytes | memoryview, device_pixel_ratio: float) -> MathImage:
    """Raises ValueError when `data` is not an image `to_bytes` made."""
    if len(data) < _HEADER.size:
        raise ValueError("a formula image too short for its header")
    pixels_w, pixels_h, width, height, centred = _HEADER.unpack_from(data)
    pixels = data[_HEADER.size :]
    if not _plausible(pixels_w, pixels_h) or len(pixels) != 4 * pixels_w * pixels_h:
        raise ValueError("a formula image of the wrong size")
    # The QImage would borrow `pixels`; the copy owns its own.
    image = QImage(bytes(pixels), pixels_w, pixels_h, 4 * pixels_w, _FORMAT).copy()
    image.setDevicePixelRatio(device_pixel_ratio)
    return MathImage(image, width, height, centred)


def _plausible(pixels_w: int, pixels_h: int) -> bool:
    return (
        0 < pixels_w <= MAX_IMAGE_SIDE
        and 0 < pixels_h <= MAX_IMAGE_SIDE
        and pixels_w * pixels_h <= MAX_IMAGE_AREA
    )
