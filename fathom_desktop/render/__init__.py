"""Turning model answers (Markdown with LaTeX math) into something a Qt text document shows."""

from __future__ import annotations

from fathom_desktop.render.document import RenderSummary, SafeDocument, html_for, math_style
from fathom_desktop.render.plaintext import answer_to_text, tex_to_text

__all__ = [
    "RenderSummary",
    "SafeDocument",
    "answer_to_text",
    "html_for",
    "math_style",
    "tex_to_text",
]
