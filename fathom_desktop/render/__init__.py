"""Turning model answers (Markdown with LaTeX math) into something a Qt text document shows.

The names below load on first use: the formula layout process imports `render.layout_host`
and must not bring Qt (which `render.document` needs) into that process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "AnswerBudget": "document",
    "PieceHtml": "document",
    "SafeDocument": "document",
    "math_style": "document",
    "piece_html": "document",
    "placeholder_metrics": "document",
    "Piece": "pieces",
    "PieceKind": "pieces",
    "PieceSplitter": "pieces",
    "split_answer": "pieces",
    "answer_to_text": "plaintext",
    "tex_to_text": "plaintext",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
