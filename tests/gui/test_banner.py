"""The message strip: problems are painted red, notes in the muted text colour."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from fathom_desktop.gui.banner import BANNER_STYLE, Banner, BannerKind


def _red_pixels(banner: Banner) -> int:
    image = banner.label.grab().toImage()
    count = 0
    for y in range(image.height()):
        for x in range(image.width()):
            colour = image.pixelColor(x, y)
            if colour.red() > 150 and colour.green() < 90 and colour.blue() < 90:
                count += 1
    return count


def test_a_problem_is_red_and_a_note_is_not(qtbot) -> None:
    host = QWidget()
    host.setStyleSheet(BANNER_STYLE)
    qtbot.addWidget(host)
    banner = Banner(host)
    host.show()

    banner.show_message("Could not load model.gguf: out of memory.")
    assert banner.text() == "Could not load model.gguf: out of memory."
    assert _red_pixels(banner) > 20

    # The same strip, reused for a note: the colour must follow the kind, not stay red.
    banner.show_message("Context capped at 4,096 tokens.", BannerKind.NOTE)
    assert banner.text() == "Context capped at 4,096 tokens."
    assert _red_pixels(banner) == 0

    banner.close_button.click()
    assert banner.text() == ""
