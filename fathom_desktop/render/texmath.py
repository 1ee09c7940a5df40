"""Markdown-it rules that find LaTeX math in model answers.

Recognised: ``\\( \\)`` and ``$ $`` inline, ``\\[ \\]`` and ``$$ $$`` display (as blocks when they
start a line, inline otherwise), and a bare ``\\boxed{...}`` outside any delimiters, which
reasoning models often write for their final answer.

A single ``$`` follows Pandoc's rule so that prices stay text: the opening ``$`` must be followed by
a non-space, the closing one preceded by a non-space and not followed by a digit. "$5 and $10"
therefore has no closing ``$`` and is left alone.
"""

from __future__ import annotations

import bisect

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.rules_inline import StateInline

MATH_INLINE = "math_inline"
MATH_DISPLAY = "math_display"  # display-style math that sits inside a paragraph
MATH_BLOCK = "math_block"

_BOXED = "\\boxed"
_INDEX_KEY = "fathom_texmath_index"  # where a parse keeps its _SourceIndex
# Trailing text allowed after a closing block delimiter, e.g. "$$x = 1$$." ends a sentence.
_BLOCK_TAIL = set(" \t.,;:")


def install(md: MarkdownIt) -> None:
    """Adds the math rules; they run before `escape`, which would otherwise eat ``\\(``."""
    md.inline.ruler.before("escape", MATH_INLINE, _inline_math)
    md.block.ruler.before(
        "fence", MATH_BLOCK, _block_math, {"alt": ["paragraph", "reference", "blockquote", "list"]}
    )


def _find_unescaped(src: str, needle: str, start: int, end: int) -> int:
    """Index of `needle` in src[start:end] not preceded by a backslash escape, or -1."""
    pos = start
    while True:
        found = src.find(needle, pos, end)
        if found < 0:
            return -1
        backslashes = 0
        back = found - 1
        while back >= start and src[back] == "\\":
            backslashes += 1
            back -= 1
        if backslashes % 2 == 0:
            return found
        pos = found + 1


class _SourceIndex:
    """Facts about one inline source, each found in one pass, so that a thousand openers with
    no closer cost one scan rather than a thousand."""

    def __init__(self, src: str) -> None:
        self.src = src
        self._group_ends: dict[int, int] | None = None
        self._dollars: tuple[list[int], set[int]] | None = None
        # (needle, end) -> the earliest start from which the needle is known to be absent
        self._missing_from: dict[tuple[str, int], int] = {}

    def find(self, needle: str, start: int, end: int) -> int:
        """`_find_unescaped`, remembering where a needle is absent."""
        if start >= self._missing_from.get((needle, end), end + 1):
            return -1
        found = _find_unescaped(self.src, needle, start, end)
        if found < 0:
            self._missing_from[(needle, end)] = start
        return found

    def group_end(self, open_brace: int, end: int) -> int:
        """Index just past the `}` matching the `{` at open_brace (within `end`), or -1."""
        if self._group_ends is None:
            self._group_ends = _match_braces(self.src)
        found = self._group_ends.get(open_brace, -1)
        return found if found <= end else -1

    def dollar_close(self, opener: int, end: int) -> int:
        """The `$` closing a single-dollar formula opened at `opener` (Pandoc's rule), or -1.

        Walking right, an unescaped `$` followed by a digit is passed over; the first other one
        closes the formula, unless a space precedes it ("$5 and $10"): then there is none."""
        if self._dollars is None:
            self._dollars = _dollar_stops(self.src)
        stops, after_space = self._dollars
        index = bisect.bisect_right(stops, opener)
        if index == len(stops) or stops[index] >= end or stops[index] in after_space:
            return -1
        return stops[index]


def _index(state: StateInline) -> _SourceIndex:
    index = state.env.get(_INDEX_KEY)
    if not isinstance(index, _SourceIndex) or index.src is not state.src:
        index = _SourceIndex(state.src)
        state.env[_INDEX_KEY] = index
    return index


def _match_braces(src: str) -> dict[int, int]:
    ends: dict[int, int] = {}
    open_at: list[int] = []
    pos = 0
    while pos < len(src):
        char = src[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "{":
            open_at.append(pos)
        elif char == "}" and open_at:
            ends[open_at.pop()] = pos + 1
        pos += 1
    return ends


def _dollar_stops(src: str) -> tuple[list[int], set[int]]:
    """The unescaped `$`s where a single-dollar search ends, in order, and which of them
    follow a space."""
    stops: list[int] = []
    after_space: set[int] = set()
    pos = src.find("$")
    while pos >= 0:
        backslashes = 0
        while pos - backslashes > 0 and src[pos - backslashes - 1] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            if pos > 0 and src[pos - 1].isspace():
                stops.append(pos)
                after_space.add(pos)
            elif not (pos + 1 < len(src) and src[pos + 1].isdigit()):
                stops.append(pos)
        pos = src.find("$", pos + 1)
    return stops, after_space


def _push_math(state: StateInline, kind: str, tex: str, markup: str) -> None:
    token = state.push(kind, "math", 0)
    token.content = tex
    token.markup = markup


def _inline_math(state: StateInline, silent: bool) -> bool:
    src, pos, end = state.src, state.pos, state.posMax
    char = src[pos]
    if char == "\\":
        if src.startswith("\\(", pos) or src.startswith("\\[", pos):
            closer = "\\)" if src[pos + 1] == "(" else "\\]"
            close = _index(state).find(closer, pos + 2, end)
            if close < 0 or not src[pos + 2 : close].strip():
                return False
            if not silent:
                kind = MATH_INLINE if closer == "\\)" else MATH_DISPLAY
                _push_math(state, kind, src[pos + 2 : close].strip(), src[pos : pos + 2])
            state.pos = close + 2
            return True
        if src.startswith(_BOXED, pos):
            brace = pos + len(_BOXED)
            while brace < end and src[brace] == " ":
                brace += 1
            if brace >= end or src[brace] != "{":
                return False
            group_end = _index(state).group_end(brace, end)
            if group_end < 0:
                return False
            if not silent:
                _push_math(state, MATH_INLINE, src[pos:group_end], "")
            state.pos = group_end
            return True
        return False

    if char != "$":
        return False
    if src.startswith("$$", pos):
        close = _index(state).find("$$", pos + 2, end)
        if close < 0 or not src[pos + 2 : close].strip():
            return False
        if not silent:
            _push_math(state, MATH_DISPLAY, src[pos + 2 : close].strip(), "$$")
        state.pos = close + 2
        return True

    # Pandoc's rule for single dollars (see the module docstring).
    if pos + 1 >= end or src[pos + 1].isspace():
        return False
    close = _index(state).dollar_close(pos, end)
    if close < 0:
        return False
    if not silent:
        _push_math(state, MATH_INLINE, src[pos + 1 : close], "$")
    state.pos = close + 1
    return True


def _block_math(state: StateBlock, start_line: int, end_line: int, silent: bool) -> bool:
    if state.is_code_block(start_line):
        return False
    begin = state.bMarks[start_line] + state.tShift[start_line]
    src = state.src
    if src.startswith("$$", begin):
        opener, closer = "$$", "$$"
    elif src.startswith("\\[", begin):
        opener, closer = "\\[", "\\]"
    else:
        return False

    line = start_line
    search_from = begin + len(opener)
    while True:
        limit = state.eMarks[line]
        close = src.find(closer, search_from, limit)
        if close >= 0:
            break
        line += 1
        if line >= end_line:
            return False
        # A blank line ends the search: an unclosed `$$` is text, not the start of a huge formula.
        if state.bMarks[line] + state.tShift[line] >= state.eMarks[line]:
            return False
        search_from = state.bMarks[line] + state.tShift[line]

    tail = src[close + len(closer) : state.eMarks[line]]
    if any(char not in _BLOCK_TAIL for char in tail):
        return False
    tex = src[begin + len(opener) : close].strip()
    if not tex:
        return False
    if silent:
        return True
    token = state.push(MATH_BLOCK, "math", 0)
    token.block = True
    token.content = tex
    token.markup = opener
    token.map = [start_line, line + 1]
    state.line = line + 1
    return True
