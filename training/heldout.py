"""The 200 held-out evaluation problems and the \\boxed{} reader the evaluations share."""

from __future__ import annotations

import re
from itertools import islice

from training.corpus import Problem, problems

EVAL_SEED = 20250601  # any seed gives problems whose numbers training never saw
EVAL_COUNT = 200

_BOXED = re.compile(r"\\boxed\{\s*\$?\s*(-?[\d,]+)\s*\}")


def held_out_problems(count: int = EVAL_COUNT, seed: int = EVAL_SEED) -> list[Problem]:
    return list(islice(problems(seed, held_out=True), count))


def boxed_answer(text: str) -> int | None:
    """The integer in the last \\boxed{...} of `text`, or None when there is none."""
    found = _BOXED.findall(text)
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None
