"""Answers that once froze the window for seconds or minutes, or lost text: the rendering tests
and bench/render_worst_case.py use them."""

from __future__ import annotations

# Every case is followed by this, which must always be shown, the boxed answer as a formula.
ENDING = "\n\nAfter all that, the answer is \\boxed{42}."


def nested(opener: str, inner: str, closer: str, depth: int) -> str:
    return opener * depth + inner + closer * depth


def paragraphs(total: int) -> str:
    line = "so the sum of the first odd numbers is a square, as checked for small n\n"
    block = line * 4 + "\n"
    return (block * (total // len(block) + 1))[:total]


CFRAC_131 = nested("\\cfrac{1}{1+", "x", "}", 10)
FRAC_157 = nested("\\frac{1}{1+", "x", "}", 13)
POWER_15 = nested("x^{", "x", "}", 15)
CFRAC_11 = nested("\\cfrac{1}{2+", "x", "}", 11)
SQRT_12 = nested("\\sqrt{", "x_1^2", "}", 12)
OPEN_SIZE = 59_000


def corpus() -> dict[str, str]:
    """Name -> answer (without ENDING)."""
    return {
        "continued fraction, 131 chars": f"Consider $${CFRAC_131}$$",
        "nested \\frac, 157 chars": f"Consider \\({FRAC_157}\\)",
        "x^{x^{...}} 15 deep": f"Consider ${POWER_15}$",
        "\\cfrac 11 levels": f"Consider $${CFRAC_11}$$",
        "\\sqrt 12 deep, scripts": f"Consider ${SQRT_12}$",
        "\\boxed{ x 5000": "\\boxed{" * 5000,
        "$1 x 5000": "$1" * 5000,
        "1 MB line": ("word " * 200_000)[:1_000_000],
        "list 10 deep": "".join("  " * i + f"- level {i}\n" for i in range(10)),
        "list 10,000 deep": "- " * 10_000 + "bottom",
        "quote 10,000 deep": "> " * 10_000 + "bottom",
        "open fence, 59 kB": "Code:\n\n```python\n" + paragraphs(OPEN_SIZE),
        "open $$, 59 kB": "Math:\n\n$$\n" + paragraphs(OPEN_SIZE),
        "open \\[, 59 kB": "Math:\n\n\\[\n" + paragraphs(OPEN_SIZE),
        "1,500 formulas": "\n\n".join(
            " and ".join(f"$x_{{{i + j}}}^2 + \\frac{{1}}{{{i + j}}}$" for j in range(10))
            for i in range(0, 1_500, 10)
        ),
    }


def worst_case() -> str:
    """Every case of the corpus in one answer, each closed off so that the next still renders
    (the open fence, `$$` and `\\[` cases would otherwise swallow the rest), then ENDING."""
    closers = {
        "open fence, 59 kB": "\n```\n",
        "open $$, 59 kB": "\n$$\n",
        "open \\[, 59 kB": "\n\\]\n",
    }
    parts = [case + closers.get(name, "") for name, case in corpus().items()]
    return "\n\n".join(parts) + ENDING
