"""Accuracy of the demo model fathom-tiny through the whole app stack, on held-out problems.

    PYTHONPATH=. .venv/bin/python bench/demo_accuracy.py                 # 200 problems, greedy
    PYTHONPATH=. .venv/bin/python bench/demo_accuracy.py --template legacy
    PYTHONPATH=. .venv/bin/python bench/demo_accuracy.py --count 40 --consensus 5

Path measured: shipped checkpoint -> the project's converter (BF16 GGUF) -> the project's
quantizer (Q8_0) -> LlamaEngine (chat template, streaming, reasoning split) -> \\boxed{} read by
the engine's consensus helpers. Greedy by default. A problem counts as correct only when its
reasoning was closed, the reply ended by itself and the boxed value equals the expected answer.

--consensus K also samples K replies per problem at Fathom's temperature 0.6 and majority-votes
their boxed values, reporting single-sample accuracy (mean over all samples) beside the vote's.
Exits 1 when greedy accuracy is under --min-accuracy (0.90) or any reply was left unclosed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from fathom_desktop.demo import demo_checkpoint, ensure_demo_model  # noqa: E402
from fathom_desktop.engine.consensus import extract_boxed, majority_vote, normalize_answer  # noqa: E402
from fathom_desktop.engine.types import (  # noqa: E402
    FATHOM_TEMPERATURE,
    ChatMessage,
    Finished,
    FinishReason,
    LoadOptions,
    SamplingParams,
)
from training.heldout import held_out_problems  # noqa: E402

LEGACY_TEMPLATE = (
    PROJECT_ROOT
    / "tests"
    / "fixtures"
    / "r1-distill-qwen-tokenizer"
    / "tokenizer_config.legacy-template.json"
)
N_CTX = 1024  # a single demo problem with its reply stays under ~450 tokens
MAX_TOKENS = 600


@dataclass(frozen=True)
class Verdict:
    correct: bool
    closed: bool  # reasoning closed, reply ended by itself, answer boxed


def judge(finished: Finished, expected: int) -> Verdict:
    boxed = extract_boxed(finished.answer)
    closed = (
        finished.stats.finish_reason is FinishReason.STOP
        and bool(finished.reasoning.strip())
        and boxed is not None
        and "</think>" not in finished.answer
    )
    correct = closed and normalize_answer(boxed or "") == normalize_answer(str(expected))
    return Verdict(correct, closed)


def run_once(engine, question: str, sampling: SamplingParams) -> Finished:  # noqa: ANN001
    finished = None
    for event in engine.generate([ChatMessage("user", question)], sampling):
        if isinstance(event, Finished):
            finished = event
    assert finished is not None, "the engine always ends a stream with Finished"
    return finished


def legacy_copy(checkpoint: Path, scratch: Path) -> Path:
    """The same checkpoint with the legacy chat template (the model writes <think> itself)."""
    folder = scratch / "fathom-tiny-legacy"
    shutil.copytree(checkpoint, folder)
    shutil.copyfile(LEGACY_TEMPLATE, folder / "tokenizer_config.json")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description="fathom-tiny accuracy through the full stack.")
    parser.add_argument(
        "--checkpoint", type=Path, help="default: the shipped resources/fathom-tiny"
    )
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--template", choices=("current", "legacy"), default="current")
    parser.add_argument("--consensus", type=int, default=0, metavar="K")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-accuracy", type=float, default=0.90)
    parser.add_argument("--show-errors", type=int, default=3)
    args = parser.parse_args()

    from fathom_desktop.engine import LlamaEngine

    problems = held_out_problems(args.count)
    with tempfile.TemporaryDirectory(prefix="fathom-demo-bench-") as scratch_name:
        scratch = Path(scratch_name)
        checkpoint = args.checkpoint or demo_checkpoint()
        if args.template == "legacy":
            checkpoint = legacy_copy(checkpoint, scratch)
        started = time.monotonic()
        model = ensure_demo_model(checkpoint=checkpoint, directory=scratch)
        print(f"converted + quantized {model.name} in {time.monotonic() - started:.1f} s")
        engine = LlamaEngine()
        try:
            engine.load(
                LoadOptions(model_path=model, n_ctx=N_CTX, n_gpu_layers=0, n_threads=args.threads)
            )
            greedy = SamplingParams(temperature=0.0, seed=0, max_tokens=MAX_TOKENS)
            started = time.monotonic()
            verdicts, tokens, errors = [], 0, []
            for problem in problems:
                finished = run_once(engine, problem.question, greedy)
                verdict = judge(finished, problem.answer)
                verdicts.append(verdict)
                tokens += finished.stats.reasoning_tokens + finished.stats.answer_tokens
                if not verdict.correct:
                    errors.append((problem, finished))
            elapsed = time.monotonic() - started
            n = len(problems)
            right = sum(v.correct for v in verdicts)
            closed = sum(v.closed for v in verdicts)
            print(
                f"greedy ({args.template} template): {right}/{n} correct "
                f"({100 * right / n:.1f}%), {closed}/{n} closed with a boxed answer; "
                f"{tokens} tokens in {elapsed:.0f} s ({tokens / elapsed:.0f} tok/s)"
            )
            for problem, finished in errors[: args.show_errors]:
                print(f"--- expected {problem.answer}: {problem.question}")
                print(f"{finished.reasoning}\n</think>\n{finished.answer}")
            if args.consensus:
                consensus_report(engine, problems, args.consensus)
        finally:
            engine.close()
    return 0 if right / n >= args.min_accuracy and closed == n else 1


def consensus_report(engine, problems, k: int) -> None:  # noqa: ANN001
    sampled_right = voted_right = 0
    for index, problem in enumerate(problems):
        samples = [
            run_once(
                engine,
                problem.question,
                SamplingParams(
                    temperature=FATHOM_TEMPERATURE, seed=1000 * index + j, max_tokens=MAX_TOKENS
                ),
            )
            for j in range(k)
        ]
        sampled_right += sum(judge(s, problem.answer).correct for s in samples)
        vote = majority_vote(samples).answer
        voted_right += vote is not None and normalize_answer(vote) == str(problem.answer)
    n = len(problems)
    print(
        f"temperature {FATHOM_TEMPERATURE}, k={k}: single samples {sampled_right}/{n * k} "
        f"({100 * sampled_right / (n * k):.1f}%), majority vote {voted_right}/{n} "
        f"({100 * voted_right / n:.1f}%)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
