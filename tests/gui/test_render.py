"""Answers render Markdown and LaTeX as a user expects, and never act on what the model wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QColor, QImage, QPainter, QTextDocument

from fathom_desktop.render import SafeDocument, answer_to_text, split_answer, tex_to_text
from fathom_desktop.render.markdown import MathSpan, to_html
from fathom_desktop.render.math import MathRenderer, MathStyle


def _spans(source: str) -> list[tuple[str, str]]:
    """The formulas the parser finds: ("inline" | "display", tex)."""
    found: list[tuple[str, str]] = []

    def sink(span: MathSpan) -> str:
        found.append(("display" if span.display else "inline", span.tex))
        return "[math]"

    to_html(source, sink)
    return found


@pytest.mark.parametrize(
    "source",
    [
        "It costs $5 and $10.",
        "Between $5 and $10 per item, or $20 wholesale.",
        "Escaped \\$x\\$ dollars.",
        "Code `$x$` and\n\n```\n$$ not math $$\n```",
        "A single $ sign.",
    ],
)
def test_dollar_signs_that_are_not_math_stay_text(source):
    assert _spans(source) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Let $x^2$ be", [("inline", "x^2")]),
        ("so \\(a+b\\) holds", [("inline", "a+b")]),
        ("inline \\[c = 1\\] display", [("display", "c = 1")]),
        ("Thus\n\\[\nx = \\frac{1}{2}\n\\]\nand so", [("display", "x = \\frac{1}{2}")]),
        ("$$\na = b\n$$", [("display", "a = b")]),
        ("$$x = 1$$.", [("display", "x = 1")]),
        ("The answer is \\boxed{\\frac{1}{2}}.", [("inline", "\\boxed{\\frac{1}{2}}")]),
        ("Costs $5, but $y$ is math", [("inline", "y")]),
        ("- item $a$\n- item $b$", [("inline", "a"), ("inline", "b")]),
    ],
)
def test_math_in_every_delimiter_is_found(source, expected):
    assert _spans(source) == expected


def test_model_html_links_and_images_are_escaped_text():
    html = to_html(
        "<b>x</b><script>alert(1)</script> <img src=file:///etc/passwd>\n\n"
        "[click](javascript:alert(1)) [site](https://example.org) ![pic](file:///etc/passwd)",
        lambda span: "",
    )
    assert "<b>" not in html and "<script>" not in html and "<img" not in html
    assert "&lt;b&gt;x&lt;/b&gt;&lt;script&gt;" in html
    assert "<a " not in html and "href" not in html  # nothing is a link
    assert "(https://example.org)" in html  # the address is shown as text


def test_markdown_lists_emphasis_and_code_blocks():
    html = to_html("1. **bold** and *it*\n2. two\n\n```py\nprint(1 < 2)\n```", lambda s: "")
    assert "<ol><li><b>bold</b> and <i>it</i></li><li>two</li></ol>" in html
    assert "print(1 &lt; 2)" in html and "<pre" in html


def _style() -> MathStyle:
    return MathStyle(font_px=16, color="#000000", x_height=8, highlight="#400000ff")


def _painted_pixels(image: QImage) -> int:
    return sum(
        1
        for y in range(0, image.height(), 2)
        for x in range(0, image.width(), 2)
        if QColor(image.pixel(x, y)).alpha() > 0
    )


def test_formulas_are_drawn_not_blank(qapp):
    rendered = MathRenderer().render("\\frac{a}{b} + \\sqrt{x_1^2}", False, _style())
    assert rendered is not None
    assert rendered.width > 20 and rendered.height > 20
    assert _painted_pixels(rendered.image) > 50  # glyphs were painted, not an empty box


def test_boxed_answer_gets_a_highlight_behind_it(qapp):
    plain = MathRenderer().render("42", True, _style())
    boxed = MathRenderer().render("\\boxed{42}", True, _style())
    assert plain is not None and boxed is not None
    # The left edge, in the box's margin: tinted for the boxed answer only.
    edge = QColor(boxed.image.pixel(1, boxed.image.height() // 2))
    assert edge.alpha() > 0 and edge.blue() > edge.red()
    plain_edge = QColor(plain.image.pixel(1, plain.image.height() // 2))
    assert not plain_edge.blue() > plain_edge.red()


def formula_objects(view) -> list[tuple[str, bool]]:
    """(source, drawn as an image) of each formula object in an answer view, in order."""
    document = view.document()
    found: list[tuple[str, bool]] = []
    block = document.firstBlock()
    while block.isValid():
        fragments = block.begin()
        while not fragments.atEnd():
            char_format = fragments.fragment().charFormat()
            if char_format.isImageFormat():
                url = char_format.toImageFormat().name()
                image = document.resource(QTextDocument.ResourceType.ImageResource, QUrl(url))
                drawn = isinstance(image, QImage) and not image.isNull()
                found += [(document.placeholders[url], drawn)] * fragments.fragment().length()
            fragments += 1
        block = block.next()
    return found


def test_formulas_arrive_as_images_and_bad_tex_stays_source(qtbot):
    from fathom_desktop.gui.answer_view import AnswerView

    view = AnswerView()
    qtbot.addWidget(view)
    view.render_source("Half is $\\frac{1}{2}$, and \\(x^\\) is broken; \\boxed{7}.")
    qtbot.waitUntil(view.is_rendered)
    # Placeholders first (the source, drawn in a code style), images as they are laid out.
    assert [source for source, _ in formula_objects(view)] == [
        "\\(\\frac{1}{2}\\)",
        "\\(x^\\)",
        "\\(\\boxed{7}\\)",
    ]
    qtbot.waitUntil(
        lambda: view.formulas - view.unrendered == sum(d for _, d in formula_objects(view))
    )
    assert formula_objects(view) == [
        ("\\(\\frac{1}{2}\\)", True),
        ("\\(x^\\)", False),  # ziamath cannot parse it: its source stays
        ("\\(\\boxed{7}\\)", True),
    ]
    assert view.unrendered == 1
    text = view.toPlainText()
    assert text.count("\ufffc") == 3 and "\\frac" not in text and "\\boxed" not in text


def test_safe_document_loads_no_local_file(qapp, tmp_path: Path):
    picture = tmp_path / "secret.png"
    image = QImage(4, 4, QImage.Format.Format_ARGB32)
    image.fill(QColor("red"))
    assert image.save(str(picture))
    url = QUrl.fromLocalFile(str(picture))
    html = f'<img src="{url.toString()}">'

    ordinary = QTextDocument()
    ordinary.setHtml(html)
    ordinary.size()  # layout asks for the image
    assert ordinary.resource(QTextDocument.ResourceType.ImageResource, url) is not None

    for src in (url.toString(), str(picture)):  # Qt's own handler reads either from disk
        safe = SafeDocument()
        safe.setHtml(f'<img src="{src}" width="4" height="4">')
        safe.size()
        drawn = QImage(20, 20, QImage.Format.Format_ARGB32)
        drawn.fill(QColor("white"))
        painter = QPainter(drawn)
        safe.drawContents(painter)
        painter.end()
        assert QColor(drawn.pixel(6, 6)) == QColor("white"), f"{src} was drawn"
        assert safe.resource(QTextDocument.ResourceType.ImageResource, QUrl(src)) is None


@pytest.mark.parametrize(
    ("tex", "text"),
    [
        ("\\frac{1}{2}", "1/2"),
        ("x^2 + y_{10}", "x² + y₁₀"),
        ("\\sqrt{a+b} \\cdot \\pi", "√(a+b) · π"),
        ("\\boxed{\\dfrac{3}{4}}", "3/4"),
        ("a \\le b \\ne c", "a ≤ b ≠ c"),
        ("x^{n+1}", "xⁿ⁺¹"),
        ("e^{i\\pi}", "e^(iπ)"),
    ],
)
def test_formulas_copy_as_readable_text(tex, text):
    assert tex_to_text(tex) == text


def test_answer_copies_as_plain_text():
    source = "# Result\n\nSo **x** is $x^2$:\n\n1. one\n2. two\n\nThe answer is \\boxed{42}."
    assert (
        answer_to_text(source) == "Result\n\nSo x is x²:\n\n1. one\n2. two\n\nThe answer is 42.\n"
    )


def test_streamed_answer_renders_paragraph_by_paragraph(qtbot):
    from fathom_desktop.gui.answer_view import AnswerView

    view = AnswerView()
    qtbot.addWidget(view)
    for piece in ["First $", "x^2$ here", ".\n\nSecond $y", "$ still"]:
        view.append_stream(piece)
    qtbot.waitUntil(lambda: not view.is_busy())
    shown = view.toPlainText()
    assert shown.startswith("First \ufffc here.")  # finished paragraph: rendered
    assert shown.endswith("Second $y$ still")  # the paragraph being written: plain
    view.render_source()
    qtbot.waitUntil(view.is_rendered)
    assert view.toPlainText() == "First \ufffc here.\nSecond \ufffc still"
    assert view.source == "First $x^2$ here.\n\nSecond $y$ still"


def test_streamed_formulas_stay_centred_and_lists_stay_lists(qtbot):
    from fathom_desktop.gui.answer_view import AnswerView

    view = AnswerView()
    qtbot.addWidget(view)
    for piece in ["Intro.\n\n", "$$x = 1$$\n\n", "- a\n- b\n\n", "End of"]:
        view.append_stream(piece)
    qtbot.waitUntil(lambda: not view.is_busy())
    blocks = []
    block = view.document().firstBlock()
    while block.isValid():
        blocks.append((block.text(), block.blockFormat().alignment(), block.textList() is not None))
        block = block.next()
    centre = Qt.AlignmentFlag.AlignHCenter
    assert [(text, list_item) for text, _, list_item in blocks] == [
        ("Intro.", False),
        ("\ufffc", False),
        ("a", True),
        ("b", True),
        ("End of", False),
    ]
    assert blocks[1][1] & centre  # the display formula
    assert not blocks[-1][1] & centre  # the plain tail after it


def test_paragraphs_inside_an_open_code_fence_wait_for_the_fence():
    from fathom_desktop.render import PieceSplitter

    splitter = PieceSplitter()
    settled = splitter.feed("Intro.\n\n```\ncode\n\nmore code\n")
    assert [piece.text for piece in settled] == ["Intro.\n\n"]
    settled = splitter.feed("```\n\nAfter")
    assert [piece.text for piece in settled] == ["```\ncode\n\nmore code\n```\n\n"]
    assert [piece.text for piece in splitter.finish()] == ["After"]
    assert [p.text for p in split_answer("a\n\n- b\n\n  c\n\nd")] == [
        "a\n\n",
        "- b\n\n  c\n\n",
        "d",
    ]


def test_an_answer_replaced_by_another_shows_only_the_new_one(qtbot):
    from fathom_desktop.gui.answer_view import AnswerView

    view = AnswerView()
    qtbot.addWidget(view)
    view.append_stream("Streamed $a$ text that the engine then replaced")
    view.render_source("Final $b^2$ answer.")
    qtbot.waitUntil(view.is_rendered)
    assert view.toPlainText() == "Final \ufffc answer."
    assert [source for source, _ in formula_objects(view)] == ["\\(b^2\\)"]
    qtbot.waitUntil(lambda: formula_objects(view) == [("\\(b^2\\)", True)])
