"""Render the PNG sizes of the app icon from resources/icons/fathom-desktop.svg.

Run after editing the SVG: python packaging/make_icons.py. Desktops that cannot read SVG icons
(and the 256x256 hicolor slot the desktop-entry installer fills) use the PNGs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICONS_DIR = Path(__file__).resolve().parents[1] / "resources" / "icons"
SIZES = (48, 256)


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(ICONS_DIR / "fathom-desktop.svg"))
    if not renderer.isValid():
        print("make_icons.py: error: the SVG does not parse.", file=sys.stderr)
        return 2
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        target = ICONS_DIR / f"fathom-desktop-{size}.png"
        if not image.save(str(target)):
            print(f"make_icons.py: error: could not write {target}.", file=sys.stderr)
            return 2
        print(f"wrote {target}")
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
