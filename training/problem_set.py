"""Write the demo's problem set for fathom-eval: held-out problems as JSON lines.

    PYTHONPATH=. .venv/bin/python -m training.problem_set      # resources/problems/...

The problems come from the held-out side of the corpus (numbers training never saw in their
kind, see corpus.is_held_out), drawn with a seed of their own so that they are not the 200
problems bench/demo_accuracy.py reports on. The output is deterministic: rerunning rewrites the
same file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.heldout import held_out_problems

PROBLEM_SET_SEED = 20261201
PROBLEM_SET_SIZE = 50
DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "resources" / "problems" / "demo-heldout-50.jsonl"
)


def problem_lines(count: int = PROBLEM_SET_SIZE, seed: int = PROBLEM_SET_SEED) -> list[str]:
    return [
        json.dumps({"problem": p.question, "answer": p.answer, "kind": p.kind}, ensure_ascii=False)
        for p in held_out_problems(count, seed)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(problem_lines()) + "\n", encoding="utf-8")
    print(f"wrote {PROBLEM_SET_SIZE} problems to {args.out}")


if __name__ == "__main__":
    main()
