"""A reply's final answer: the last `\\boxed{...}` value, and a key to compare values by.

Pure string functions, with no engine types, so that the engine's types (the vote's result) and
the vote itself can both use them.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED_OPENERS = ("\\boxed{", "\\fbox{")


def extract_boxed(answer: str) -> str | None:
    """The content of the last `\\boxed{...}` in `answer` (nested braces allowed), or None."""
    best: tuple[int, str] | None = None
    for opener in _BOXED_OPENERS:
        start = answer.rfind(opener)
        while start >= 0:
            content = _balanced(answer, start + len(opener))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            start = answer.rfind(opener, 0, start)
    return None if best is None else best[1].strip()


def _balanced(text: str, begin: int) -> str | None:
    """Text from `begin` up to the brace that closes the one just before it; None if unclosed."""
    depth = 1
    index = begin
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # an escaped brace such as \{ does not count
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
        index += 1
    return None


_UNWRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"^-?\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\$", "$", "\\%", "%", " ")
_DEGREES = ("^\\circ", "^{\\circ}", "°")


def normalize_answer(value: str) -> str:
    """A comparison key: "72", "72.0", "\\$72" and "\\frac{144}{2}" all give "72"."""
    text = value.strip()
    previous = None
    while previous != text:
        previous = text
        text = _UNWRAP.sub(r"\1", text)
    for noise in (*_NOISE, *_DEGREES):
        text = text.replace(noise, "")
    text = text.replace("{,}", ",")  # LaTeX thousands separator
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    number = _as_fraction(text)
    if number is not None:
        return str(number)
    return text


def _as_fraction(text: str) -> Fraction | None:
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if _NUMBER.match(text):
        return Fraction(text)
    match = _FRAC.match(text)
    if match and int(match.group(2)) != 0:
        sign = -1 if text.startswith("-") else 1
        return sign * Fraction(int(match.group(1)), int(match.group(2)))
    if text.count("/") == 1:
        numerator, denominator = text.split("/")
        if _NUMBER.match(numerator) and _NUMBER.match(denominator) and Fraction(denominator) != 0:
            return Fraction(numerator) / Fraction(denominator)
    return None
