"""Model answer (Markdown + LaTeX) to the HTML subset QTextDocument understands.

The model's text is data, never markup: raw HTML is disabled in the parser so `<b>` or `<script>`
arrive as escaped text, links are shown as their text and address but are not anchors, and images
are never fetched (only a "[image: ...]" note is shown). Math is handed to a callback that returns
the HTML to put in its place (an `<img>` of a pre-registered resource, or escaped source).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.token import Token

from fathom_desktop.render import texmath


@dataclass(frozen=True)
class MathSpan:
    tex: str
    display: bool


# Returns the HTML that stands for one formula.
MathSink = Callable[[MathSpan], str]

# Qt's HTML subset has no CSS classes on most blocks, so styling is inline. Qt reads eight-digit
# colours as #AARRGGBB: a light grey here, not #RRGGBBAA's olive.
CODE_BLOCK_STYLE = "background-color:#1f808080; font-family:monospace; white-space:pre-wrap"
CODE_INLINE_STYLE = "background-color:#26808080; font-family:monospace"


# Qt indents every nested list or quote; past this many levels (eight nested lists) the rest of
# the nested text is shown as written. markdown-it's own limit (maxNesting, 20) drops everything
# after it, so this rule must come first.
MAX_BLOCK_LEVEL = 16
DEEP_TEXT = "deep_text"


@functools.cache
def parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    texmath.install(md)
    first = md.block.ruler.get_all_rules()[0]
    md.block.ruler.before(first, DEEP_TEXT, _deep_text)
    return md


def _deep_text(state: StateBlock, start_line: int, end_line: int, silent: bool) -> bool:
    """Past MAX_BLOCK_LEVEL, the lines of the innermost container are kept as plain text."""
    if state.level < MAX_BLOCK_LEVEL:
        return False
    if silent:
        return True
    line = start_line + 1
    while line < end_line and (state.isEmpty(line) or state.sCount[line] >= state.blkIndent):
        line += 1
    token = state.push(DEEP_TEXT, "", 0)
    token.block = True
    token.content = state.getLines(start_line, line, state.blkIndent, False)
    token.map = [start_line, line]
    state.line = line
    return True


def note_html(text: str) -> str:
    """A short remark of the app's own in an answer (not the model's words)."""
    return f'<span style="color:gray; font-style:italic">[{html.escape(text)}]</span>'


def to_html(source: str, math: MathSink) -> str:
    md = parser()
    env: dict[str, object] = {}
    tokens = md.parse(source, env)
    return _HtmlWriter(math).blocks(tokens)


class _HtmlWriter:
    """Writes tokens by hand: markdown-it's own renderer would emit anchors and image loads."""

    def __init__(self, math: MathSink) -> None:
        self._math = math

    def blocks(self, tokens: Sequence[Token]) -> str:
        out: list[str] = []
        for token in tokens:
            kind = token.type
            if kind == "inline":
                out.append(self.inline(token.children or []))
            elif kind == texmath.MATH_BLOCK:
                out.append(f'<p align="center">{self._math(MathSpan(token.content, True))}</p>')
            elif kind == DEEP_TEXT:
                text = html.escape(token.content.rstrip("\n"))
                note = note_html("nested too deeply to format; shown as written")
                out.append(f'<p style="white-space:pre-wrap">{note}<br/>{text}</p>')
            elif kind in ("fence", "code_block"):
                code = html.escape(token.content.rstrip("\n"))
                out.append(f'<pre style="{CODE_BLOCK_STYLE}">{code}</pre>')
            elif kind == "hr":
                out.append("<hr/>")
            elif kind == "paragraph_open":
                # Tight list items hide their paragraphs; Qt adds margins to any <p>.
                out.append("" if token.hidden else "<p>")
            elif kind == "paragraph_close":
                out.append("" if token.hidden else "</p>")
            elif kind == "ordered_list_open":
                start = token.attrGet("start")
                out.append(f'<ol start="{int(start)}">' if start is not None else "<ol>")
            elif kind in _PLAIN_TAGS:
                out.append(_PLAIN_TAGS[kind])
            elif kind.endswith(("_open", "_close")) and token.tag in _ALLOWED_BLOCK_TAGS:
                closing = "/" if token.nesting < 0 else ""
                align = _cell_alignment(token) if token.nesting > 0 else ""
                out.append(f"<{closing}{token.tag}{align}>")
        return "".join(out)

    def inline(self, children: Sequence[Token]) -> str:
        out: list[str] = []
        # (address, index in `out` where the link text starts) of each open link
        links: list[tuple[str, int]] = []
        for token in children:
            kind = token.type
            if kind in ("text", "text_special"):
                out.append(html.escape(token.content))
            elif kind == "code_inline":
                out.append(f'<code style="{CODE_INLINE_STYLE}">{html.escape(token.content)}</code>')
            elif kind == "softbreak":
                out.append("\n")
            elif kind == "hardbreak":
                out.append("<br/>")
            elif kind == texmath.MATH_INLINE:
                out.append(self._math(MathSpan(token.content, False)))
            elif kind == texmath.MATH_DISPLAY:
                out.append(self._math(MathSpan(token.content, True)))
            elif kind == "link_open":
                # Not an anchor: the text is written as ordinary text and the address after it.
                links.append((str(token.attrGet("href") or ""), len(out)))
            elif kind == "link_close" and links:
                href, text_start = links.pop()
                shown = html.escape(href)
                if href and "".join(out[text_start:]) not in (
                    shown,
                    html.escape(href.removeprefix("mailto:")),
                ):
                    out.append(f' <span style="color:gray">({shown})</span>')
            elif kind == "image":
                alt = "".join(child.content for child in token.children or [])
                out.append(html.escape(f"[image: {alt}]" if alt else "[image]"))
            elif kind in _INLINE_TAGS:
                out.append(_INLINE_TAGS[kind])
        return "".join(out)


def _cell_alignment(token: Token) -> str:
    style = str(token.attrGet("style") or "")
    for side in ("left", "center", "right"):
        if f"text-align:{side}" in style:
            return f' align="{side}"'
    return ""


_PLAIN_TAGS = {
    "bullet_list_open": "<ul>",
    "bullet_list_close": "</ul>",
    "ordered_list_close": "</ol>",
    "list_item_open": "<li>",
    "list_item_close": "</li>",
    "blockquote_open": "<blockquote>",
    "blockquote_close": "</blockquote>",
    "table_open": '<table border="1" cellspacing="0" cellpadding="4">',
    "table_close": "</table>",
}
_ALLOWED_BLOCK_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "thead", "tbody", "tr", "th", "td"}
_INLINE_TAGS = {
    "em_open": "<i>",
    "em_close": "</i>",
    "strong_open": "<b>",
    "strong_close": "</b>",
    "s_open": "<s>",
    "s_close": "</s>",
}
