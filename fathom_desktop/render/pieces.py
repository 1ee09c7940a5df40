"""Cutting an answer into pieces that render on their own, in one pass over the text.

A streamed answer is settled piece by piece: a piece ends where a blank line is followed by a
line that starts in the first column outside a code fence. Markdown carries no construct across
such a line (a paragraph, `$$`/`\\[` math and list items all end there), so rendering the pieces
one by one gives what rendering the whole would. Each line is examined once, however long the
answer and whatever is left open, so the cost of an update does not grow with the answer.

Pieces are bounded so that no single one is slow to parse or lay out: a long run without such a
line is cut at a line start (inside a code fence the rest continues as code), and a line longer
than MAX_LINE_CHARS is shown as plain text in slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Markdown-it parses about 1-2 kB per millisecond; a piece this size stays well under a frame.
MAX_PIECE_CHARS = 4_000
# A line longer than this is not Markdown a person wrote: it is shown as text.
MAX_LINE_CHARS = 4_000
# Plain-text slices of an overlong line: Qt lays out a whole paragraph on every change to it.
PLAIN_SLICE_CHARS = 1_000
# The settled text is dropped from the buffer once it is this large (and half of it).
_COMPACT_CHARS = 1 << 16

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


class PieceKind(StrEnum):
    MARKDOWN = "markdown"
    CODE = "code"  # the continuation of a code fence opened in an earlier piece
    PLAIN = "plain"  # a slice of an overlong line


@dataclass(frozen=True)
class Piece:
    kind: PieceKind
    text: str
    start: int  # offset of `text` in the answer
    # Code pieces: the fence they continue (a line closing it ends the piece and is not shown).
    fence: str = ""
    # Plain pieces: True for the first slice of its line (which carries a note).
    first: bool = True

    @property
    def end(self) -> int:
        return self.start + len(self.text)


class PieceSplitter:
    """Feed the answer as it streams; get back the pieces that have settled."""

    def __init__(self) -> None:
        self._buf = ""
        self._offset = 0  # offset in the answer of _buf[0]
        self._pos = 0  # start of the unsettled text in _buf
        self._scanned = 0  # start of the first line not yet examined
        self._fence = ""  # open fence marker ("```", "~~~~") at _scanned, or ""
        self._piece_fence = ""  # fence the unsettled text starts inside of
        self._after_blank = False  # the last examined line was blank (outside a fence)
        # Latest line start after _pos where a forced cut does least harm, and the fence there.
        self._cut = -1
        self._cut_fence = ""
        self._overlong = False  # the current line is being shown as plain text
        self._plain_started = False

    @property
    def settled(self) -> int:
        """Characters of the answer handed out as pieces."""
        return self._offset + self._pos

    def feed(self, text: str) -> list[Piece]:
        if self._pos > _COMPACT_CHARS and self._pos * 2 > len(self._buf):
            drop = self._pos
            self._buf = self._buf[drop:]
            self._offset += drop
            self._pos = 0
            self._scanned -= drop
            self._cut = self._cut - drop if self._cut >= 0 else -1
        self._buf += text
        out: list[Piece] = []
        while (piece := self._next_piece()) is not None:
            out.append(piece)
        return out

    def finish(self) -> list[Piece]:
        """The pieces left when the answer is complete."""
        out: list[Piece] = []
        while self._pos < len(self._buf):
            rest = len(self._buf) - self._pos
            if self._overlong:
                end = min(len(self._buf), self._pos + PLAIN_SLICE_CHARS)
                out.append(self._make(PieceKind.PLAIN, end, self._fence))
            elif rest <= MAX_PIECE_CHARS:
                out.append(self._settle(len(self._buf), self._fence))
            elif (piece := self._next_piece()) is not None:
                out.append(piece)
            else:
                # Long, but not cut yet: cut at the last line start that leaves it short enough.
                limit = self._buf.rfind("\n", self._pos, self._pos + MAX_PIECE_CHARS) + 1
                end = limit if limit > self._pos else len(self._buf)
                out.append(self._settle(end, self._fence))
        return out

    # -- scanning -------------------------------------------------------------------------------

    def _next_piece(self) -> Piece | None:
        buf = self._buf
        while True:
            if self._overlong:
                return self._plain_slice()
            newline = buf.find("\n", self._scanned)
            line_end = len(buf) if newline < 0 else newline
            if line_end - self._scanned > MAX_LINE_CHARS:
                if self._scanned > self._pos:
                    return self._settle(self._scanned, self._fence)
                self._overlong = True
                continue
            if newline < 0:
                break
            if newline + 1 - self._pos > MAX_PIECE_CHARS and self._scanned > self._pos:
                return self._forced_cut()
            line_start = self._scanned
            self._scanned = newline + 1
            boundary = self._examine(buf[line_start:newline], line_start)
            if boundary is not None:
                return self._settle(boundary, "")
        # The last, partial line: once its first character is known, a blank line before it
        # ends the piece (the paragraph before it is complete).
        if (
            self._after_blank
            and not self._fence
            and self._pos < self._scanned < len(buf)
            and not buf[self._scanned].isspace()
        ):
            self._after_blank = False
            return self._settle(self._scanned, "")
        if len(buf) - self._pos > MAX_PIECE_CHARS and self._scanned > self._pos:
            return self._forced_cut()
        return None

    def _examine(self, line: str, line_start: int) -> int | None:
        """Takes in one complete line; returns where a piece ends, if one does."""
        if self._fence:
            if _closes(line, self._fence):
                self._fence = ""
                self._after_blank = False
                if self._piece_fence:
                    # A code continuation ends with its fence, so Markdown resumes after it.
                    return line_start + len(line) + 1
            return None
        blank = not line.strip()
        if not blank and self._after_blank and not line[0].isspace() and line_start > self._pos:
            self._after_blank = False
            self._scanned = line_start  # this line is examined again, as the next piece's first
            return line_start
        if not blank and not line[0].isspace():
            self._cut, self._cut_fence = line_start, ""
        opener = _FENCE.match(line)
        if opener is not None and not (opener.group(1)[0] == "`" and "`" in line[opener.end() :]):
            self._fence = opener.group(1)
        self._after_blank = blank
        return None

    def _forced_cut(self) -> Piece | None:
        """Cuts a long run with no natural end yet at a line start."""
        if self._fence:  # code can be cut between any two lines
            return self._settle(self._scanned, self._fence)
        if self._cut > self._pos:
            return self._settle(self._cut, self._cut_fence)
        return self._settle(self._scanned, self._fence)

    def _plain_slice(self) -> Piece | None:
        buf = self._buf
        newline = buf.find("\n", self._pos, self._pos + PLAIN_SLICE_CHARS)
        if newline >= 0:
            self._overlong = False
            self._after_blank = False
            return self._make(PieceKind.PLAIN, newline + 1, self._fence)
        if len(buf) - self._pos < PLAIN_SLICE_CHARS:
            return None
        return self._make(PieceKind.PLAIN, self._pos + PLAIN_SLICE_CHARS, self._fence)

    def _settle(self, end: int, fence_at_end: str) -> Piece:
        kind = PieceKind.CODE if self._piece_fence else PieceKind.MARKDOWN
        return self._make(kind, end, fence_at_end)

    def _make(self, kind: PieceKind, end: int, fence_at_end: str) -> Piece:
        first = True
        if kind is PieceKind.PLAIN:
            first = not self._plain_started
            self._plain_started = self._overlong
        piece = Piece(kind, self._buf[self._pos : end], self._offset + self._pos,
                      self._piece_fence, first)  # fmt: skip
        self._pos = end
        self._scanned = max(self._scanned, end)
        self._cut = -1
        self._piece_fence = fence_at_end
        return piece


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip(" ")) <= 3
        and len(stripped) >= len(fence)
        and set(stripped) == {fence[0]}
    )


def split_answer(source: str) -> list[Piece]:
    """A finished answer's pieces, in order."""
    splitter = PieceSplitter()
    return splitter.feed(source) + splitter.finish()
