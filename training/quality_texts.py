"""The two texts that measure and shape quantization quality, written to resources/quality/.

Fathom is a reasoning model, so each text mixes English prose with worked solutions in its own
style. The prose is the Python Language Reference as CPython ships it (`pydoc_data.topics`,
PSF License); the worked solutions come from the demo's problem generator (training/corpus.py).
The two texts share nothing: the evaluation text takes every even-numbered reference topic and
problems from the held-out side of the corpus split, the calibration text the odd-numbered
topics and problems from the training side, each from its own seed.

    python -m training.quality_texts        # rewrites resources/quality/*.txt deterministically
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from pydoc_data.topics import topics

from training.corpus import Problem, problems

OUT_DIR = Path(__file__).resolve().parents[1] / "resources" / "quality"
PROBLEMS_PER_TOPIC = 6


def worked_solution(problem: Problem) -> str:
    return (
        f"Problem: {problem.question}\n\n<think>\n{problem.reasoning}\n</think>\n\n"
        f"{problem.answer_text}\n"
    )


def mixed_text(topic_names: list[str], stream: Iterator[Problem]) -> str:
    parts: list[str] = []
    for name in topic_names:
        parts.append(topics[name].strip() + "\n")
        parts.extend(worked_solution(p) for p in itertools.islice(stream, PROBLEMS_PER_TOPIC))
    return "\n".join(parts)


def main() -> None:
    names = sorted(topics)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    evaluation = mixed_text(names[0::2], problems(seed=2026, held_out=True))
    calibration = mixed_text(names[1::2], problems(seed=1912, held_out=False))
    (OUT_DIR / "evaluation.txt").write_text(evaluation, encoding="utf-8")
    (OUT_DIR / "calibration.txt").write_text(calibration, encoding="utf-8")
    print(f"evaluation {len(evaluation):,} characters, calibration {len(calibration):,}")


if __name__ == "__main__":
    main()
