"""Renders problems as R1 chat transcripts, token for token what the app's template produces."""

from __future__ import annotations

import random
from dataclasses import dataclass

from training.corpus import Problem

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Fathom's evaluation instruction; the app may or may not append it, so training sees both.
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Transcript:
    prompt: str  # everything the model is given, ending with the assistant tag
    completion: str  # what the model must write, from "<think>\n" to the end-of-sentence token


def user_message(problem: Problem, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.4:
        return problem.question
    if style < 0.8:
        return f"{problem.question}\n{INSTRUCTION}"
    return f"{problem.question} {INSTRUCTION}"


def completion_text(problem: Problem) -> str:
    return f"{THINK_OPEN}\n{problem.reasoning}\n{THINK_CLOSE}\n\n{problem.answer_text}"


def transcript(problem: Problem, rng: random.Random, earlier: Problem | None = None) -> Transcript:
    """One training sample. The completion starts with "<think>\\n": under the current R1 template
    the prompt already holds it and those two tokens are simply given; under the legacy template the
    model writes them itself. Training on them covers both variants with one token sequence.

    `earlier` adds a finished first turn; like the chat template, it keeps only the answer."""
    history = ""
    if earlier is not None:
        history = f"{USER}{user_message(earlier, rng)}{ASSISTANT}{earlier.answer_text}{EOS}"
    prompt = f"{BOS}{history}{USER}{user_message(problem, rng)}{ASSISTANT}"
    return Transcript(prompt, completion_text(problem) + EOS)
