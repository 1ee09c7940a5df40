"""Turning model answers (Markdown with LaTeX math) into something a Qt text document shows."""

from __future__ import annotations

from fathom_desktop.render.document import (
    AnswerBudget,
    PieceHtml,
    SafeDocument,
    math_style,
    piece_html,
    placeholder_metrics,
)
from fathom_desktop.render.pieces import Piece, PieceKind, PieceSplitter, split_answer
from fathom_desktop.render.plaintext import answer_to_text, tex_to_text

__all__ = [
    "AnswerBudget",
    "Piece",
    "PieceHtml",
    "PieceKind",
    "PieceSplitter",
    "SafeDocument",
    "answer_to_text",
    "math_style",
    "piece_html",
    "placeholder_metrics",
    "split_answer",
    "tex_to_text",
]
