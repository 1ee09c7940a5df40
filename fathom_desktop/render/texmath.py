"""Markdown-it rules that find LaTeX math in model answers.

Recognised: ``\\( \\)`` and ``$ $`` inline, ``\\[ \\]`` and ``$$ $$`` display (as blocks when they
start a line, inline otherwise), and a bare ``\\boxed{...}`` outside any delimiters, which
reasoning models often write for their final answer.

A single ``$`` follows Pandoc's rule so that prices stay text: the opening ``$`` must be followed by
a non-space, the closing one preceded by a non-space and not followed by a digit. "$5 and $10"
therefore has no closing ``$`` and is left alone.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock
from markdown_it.rules_inline import StateInline

MATH_INLINE = "math_inline"
MATH_DISPLAY = "math_display"  # display-style math that sits inside a paragraph
MATH_BLOCK = "math_block"

_BOXED = "\\boxed"
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


def _balanced_group_end(src: str, open_brace: int, end: int) -> int:
    """Index just past the `}` matching the `{` at open_brace, or -1."""
    depth = 0
    pos = open_brace
    while pos < end:
        char = src[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return -1


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
            close = src.find(closer, pos + 2, end)
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
            group_end = _balanced_group_end(src, brace, end)
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
        close = _find_unescaped(src, "$$", pos + 2, end)
        if close < 0 or not src[pos + 2 : close].strip():
            return False
        if not silent:
            _push_math(state, MATH_DISPLAY, src[pos + 2 : close].strip(), "$$")
        state.pos = close + 2
        return True

    # Pandoc's rule for single dollars (see the module docstring).
    if pos + 1 >= end or src[pos + 1].isspace():
        return False
    search = pos + 1
    while True:
        close = _find_unescaped(src, "$", search, end)
        if close < 0:
            return False
        if src[close - 1].isspace():
            # "$5 and $10": a `$` after a space only ever opens, so this `$` starts no formula.
            return False
        if close + 1 < end and src[close + 1].isdigit():
            search = close + 1
            continue
        break
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
