"""An answer as plain text for the clipboard: Markdown marks dropped, formulas in readable Unicode.

"Copy as LaTeX" hands out the model's source unchanged; this is the other "Copy", for pasting into
places that show neither Markdown nor TeX (x^2 becomes x², \\frac{1}{2} becomes 1/2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from markdown_it.token import Token

from fathom_desktop.render import texmath
from fathom_desktop.render.markdown import parser

_SYMBOLS = {
    "cdot": "·", "times": "×", "div": "÷", "pm": "±", "mp": "∓", "le": "≤", "leq": "≤",
    "ge": "≥", "geq": "≥", "ne": "≠", "neq": "≠", "approx": "≈", "equiv": "≡", "sim": "∼",
    "infty": "∞", "to": "→", "rightarrow": "→", "leftarrow": "←", "Rightarrow": "⇒",
    "implies": "⇒", "iff": "⇔", "Leftrightarrow": "⇔", "in": "∈", "notin": "∉", "subset": "⊂",
    "subseteq": "⊆", "cup": "∪", "cap": "∩", "emptyset": "∅", "forall": "∀", "exists": "∃",
    "sum": "∑", "prod": "∏", "int": "∫", "partial": "∂", "nabla": "∇", "angle": "∠",
    "circ": "∘", "degree": "°", "perp": "⊥", "parallel": "∥", "ldots": "…", "cdots": "⋯",
    "dots": "…", "mid": "|", "lfloor": "⌊", "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉",
    "langle": "⟨", "rangle": "⟩", "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ",
    "epsilon": "ε", "varepsilon": "ε", "zeta": "ζ", "eta": "η", "theta": "θ", "iota": "ι",
    "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ",
    "sigma": "σ", "tau": "τ", "phi": "φ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Pi": "Π", "Sigma": "Σ",
    "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω", "quad": "  ", "qquad": "    ", "%": "%", "$": "$",
    "{": "{", "}": "}", ",": " ", ";": " ", ":": " ", "!": "", " ": " ", "\\": "\n",
}  # fmt: skip
_SUPERSCRIPTS = str.maketrans("0123456789+-=()n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿ")
_SUBSCRIPTS = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")
# Commands whose braced argument is kept as is (fonts, text, the answer box).
_TRANSPARENT = {"text", "textbf", "textit", "mathrm", "mathbf", "mathit", "mathbb", "boxed",
                "operatorname", "mathcal"}  # fmt: skip
# Sizing commands that are simply dropped.
_DROPPED = {"left", "right", "big", "Big", "bigl", "bigr", "displaystyle", "textstyle", "limits"}
_FRACTIONS = {"frac", "dfrac", "tfrac"}


def tex_to_text(tex: str) -> str:
    return _TexReader(tex).read_until(None).strip()


class _TexReader:
    def __init__(self, tex: str) -> None:
        self.tex = tex
        self.pos = 0

    def read_until(self, closer: str | None) -> str:
        out: list[str] = []
        while self.pos < len(self.tex):
            char = self.tex[self.pos]
            if char == closer:
                self.pos += 1
                break
            self.pos += 1
            if char == "{":
                out.append(self.read_until("}"))
            elif char == "\\":
                out.append(self.command())
            elif char in "^_":
                out.append(self.script(char))
            elif char == "&":
                continue
            else:
                out.append(char)
        return "".join(out)

    def argument(self) -> str:
        while self.pos < len(self.tex) and self.tex[self.pos] == " ":
            self.pos += 1
        if self.pos >= len(self.tex):
            return ""
        char = self.tex[self.pos]
        self.pos += 1
        if char == "{":
            return self.read_until("}")
        if char == "\\":
            return self.command()
        return char

    def command(self) -> str:
        match = re.match(r"[A-Za-z]+|.", self.tex[self.pos :], re.DOTALL)
        if match is None:
            return "\\"
        name = match.group(0)
        self.pos += len(name)
        if name in _FRACTIONS:
            numerator, denominator = self.argument(), self.argument()
            return f"{_group(numerator)}/{_group(denominator)}"
        if name == "sqrt":
            return f"√{_group(self.argument())}"
        if name in ("begin", "end"):
            self.argument()
            return ""
        if name in _DROPPED:
            return ""
        if name in _TRANSPARENT:
            return self.argument()
        return _SYMBOLS.get(name, name)

    def script(self, mark: str) -> str:
        body = self.argument()
        table = _SUPERSCRIPTS if mark == "^" else _SUBSCRIPTS
        if body and all(ord(char) in table for char in body):
            return body.translate(table)
        return f"{mark}{body}" if len(body) == 1 else f"{mark}({body})"


def _group(text: str) -> str:
    text = text.strip()
    return text if re.fullmatch(r"[\w.√²³]+", text) else f"({text})"


def answer_to_text(source: str) -> str:
    tokens = parser().parse(source, {})
    return _TextWriter().blocks(tokens).strip() + "\n"


class _TextWriter:
    def __init__(self) -> None:
        # One entry per open list: the next item number, or None for bullets.
        self.lists: list[int | None] = []

    def blocks(self, tokens: Sequence[Token]) -> str:
        out: list[str] = []
        for token in tokens:
            kind = token.type
            if kind == "inline":
                out.append(self.inline(token.children or []))
            elif kind == texmath.MATH_BLOCK:
                out.append(tex_to_text(token.content) + "\n\n")
            elif kind in ("fence", "code_block"):
                out.append(token.content + "\n")
            elif kind == "paragraph_close":
                out.append("\n" if token.hidden else "\n\n")
            elif kind in ("heading_close", "tr_close"):
                out.append("\n\n" if kind == "heading_close" else "\n")
            elif kind in ("th_close", "td_close"):
                out.append("\t")
            elif kind == "bullet_list_open":
                self.lists.append(None)
            elif kind == "ordered_list_open":
                self.lists.append(int(token.attrGet("start") or 1))
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
                out.append("\n")
            elif kind == "list_item_open":
                number = self.lists[-1]
                indent = "  " * (len(self.lists) - 1)
                out.append(f"{indent}- " if number is None else f"{indent}{number}. ")
                if number is not None:
                    self.lists[-1] = number + 1
        return re.sub(r"\n{3,}", "\n\n", "".join(out))

    def inline(self, children: Sequence[Token]) -> str:
        out: list[str] = []
        for token in children:
            kind = token.type
            if kind in ("text", "text_special", "code_inline"):
                out.append(token.content)
            elif kind in ("softbreak", "hardbreak"):
                out.append("\n")
            elif kind in (texmath.MATH_INLINE, texmath.MATH_DISPLAY):
                out.append(tex_to_text(token.content))
            elif kind == "image":
                out.append(token.content)
        return "".join(out)
