"""fathom-eval: does this quant keep Fathom's accuracy? pass@1 and cons@K on a problem set.

    fathom-eval PROBLEMS.jsonl [--model FILE.gguf] [--samples K] [--parallel P]
        [--max-tokens N] [--out results.jsonl] [--hub DATASET]
        [--server URL [--api-key KEY] [--server-model NAME]]

A problem set is JSON lines, each with the problem (`problem` or `question`) and its `answer`.
Every problem is asked with Fathom's evaluation preset (the instruction in the user's turn), K
samples are drawn at Fathom's temperature and each sample's last `\\boxed{}` is compared with the
answer under the vote's normalization. pass@1 is the mean over all samples; cons@K counts the
problems whose majority vote is right.

With --out, each problem's result is appended as one JSON line when it is done: a rerun skips
problems already there, and Ctrl-C (the current problem is abandoned) keeps everything finished.
--hub DATASET downloads PROBLEMS.jsonl from that Hugging Face dataset first; nothing else here
touches the network. Without --model the embedded demo model answers (its problem set is
resources/problems/demo-heldout-50.jsonl).

--server asks an OpenAI-compatible server instead (as fathom-chat does): a server that honours
`n` (vLLM, fathom-serve) gets each problem's K samples in one request (in parts of 16 for a larger
K); any other gets K requests, at most --parallel (default 4) in flight.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from convert.errors import ConversionError
from fathom_desktop.engine.consensus import (
    ConsensusResult,
    check_sample_count,
    majority_vote,
    normalize_answer,
)
from fathom_desktop.engine.errors import EngineError
from fathom_desktop.engine.prompt import with_eval_instruction
from fathom_desktop.engine.types import (
    FATHOM_N_CTX,
    FATHOM_TEMPERATURE,
    FATHOM_TOP_P,
    ChatEngine,
    ChatMessage,
    Finished,
    GenerationControl,
    LoadOptions,
    SamplingParams,
)
from fathom_desktop.terminal import (
    add_server_options,
    ctrl_c_cancels,
    positive_option,
    server_engine,
)

PROG = "fathom-eval"
# fathom-serve's most choices in one request; a larger K goes to a server in parts of this size.
SAMPLES_PER_REQUEST = 16
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


class ProblemSetError(Exception):
    """The problem file cannot be read as a problem set; the message names the line."""


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str


@dataclass(frozen=True)
class ProblemResult:
    question: str
    expected: str
    boxed: tuple[str | None, ...]  # each sample's last boxed value
    correct: tuple[bool, ...]  # each sample's verdict
    vote: str | None
    finish_reasons: tuple[str, ...]
    tokens: tuple[int, ...]  # each sample's reasoning + answer tokens
    parallel: int

    @property
    def pass_at_1(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def consensus_correct(self) -> bool:
        return self.vote is not None and is_correct(self.vote, self.expected)

    def to_json(self) -> dict[str, Any]:
        return {
            "problem": self.question,
            "answer": self.expected,
            "boxed": list(self.boxed),
            "correct": list(self.correct),
            "vote": self.vote,
            "finish_reasons": list(self.finish_reasons),
            "tokens": list(self.tokens),
            "parallel": self.parallel,
            "pass@1": self.pass_at_1,
            "cons": self.consensus_correct,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProblemResult:
        return cls(
            question=str(data["problem"]),
            expected=str(data["answer"]),
            boxed=tuple(data["boxed"]),
            correct=tuple(bool(c) for c in data["correct"]),
            vote=data["vote"],
            finish_reasons=tuple(data["finish_reasons"]),
            tokens=tuple(int(t) for t in data["tokens"]),
            parallel=int(data.get("parallel", 1)),
        )


def is_correct(boxed: str | None, expected: str) -> bool:
    return boxed is not None and normalize_answer(boxed) == normalize_answer(expected)


def read_problems(path: Path) -> list[Problem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ProblemSetError(f"No problem set at {path}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ProblemSetError(f"Cannot read {path}: {error}.") from None
    problems: list[Problem] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise ProblemSetError(f"{path.name}, line {number}: not JSON ({error.msg}).") from None
        question = data.get("problem", data.get("question")) if isinstance(data, dict) else None
        answer = data.get("answer") if isinstance(data, dict) else None
        if not isinstance(question, str) or not question.strip() or answer is None:
            raise ProblemSetError(
                f"{path.name}, line {number}: needs a 'problem' (or 'question') and an 'answer'."
            )
        problems.append(Problem(question, str(answer)))
    if not problems:
        raise ProblemSetError(f"{path.name} holds no problems.")
    return problems


def read_done(out: Path) -> dict[str, ProblemResult]:
    """Results already in --out, by problem text. A torn last line (a crash) is ignored."""
    done: dict[str, ProblemResult] = {}
    if not out.is_file():
        return done
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            result = ProblemResult.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        done[result.question] = result
    return done


def evaluate_problem(
    engine: ChatEngine,
    problem: Problem,
    sampling: SamplingParams,
    k: int,
    parallel: int | None,
    control: GenerationControl,
    *,
    per_request: int | None = None,
) -> ConsensusResult:
    """K samples and their vote; with `per_request`, asked for in parts of at most that many
    (sample i keeps seed + i) and voted on together."""
    messages = with_eval_instruction([ChatMessage("user", problem.question)])
    if per_request is None or k <= per_request:
        return engine.consensus(messages, sampling, k, control, parallel=parallel)
    samples: list[Finished] = []
    for first in range(0, k, per_request):
        seed = None if sampling.seed is None else sampling.seed + first
        part = engine.consensus(
            messages,
            replace(sampling, seed=seed),
            min(per_request, k - first),
            control,
            parallel=parallel,
        )
        samples.extend(part.samples)
        if control.cancel.is_set():
            break
    return majority_vote(samples)


def to_result(problem: Problem, result: ConsensusResult) -> ProblemResult:
    return ProblemResult(
        question=problem.question,
        expected=problem.answer,
        boxed=result.boxed,
        correct=tuple(is_correct(b, problem.answer) for b in result.boxed),
        vote=result.answer,
        finish_reasons=tuple(s.stats.finish_reason.value for s in result.samples),
        tokens=tuple(s.stats.reasoning_tokens + s.stats.answer_tokens for s in result.samples),
        parallel=result.parallel,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Measure pass@1 and cons@K of a Fathom GGUF on a problem set."
    )
    parser.add_argument("problems", type=Path, metavar="PROBLEMS.jsonl")
    parser.add_argument("--model", type=Path, help="the GGUF model (default: the demo model)")
    parser.add_argument("--samples", type=positive_option, default=1, metavar="K", help="default 1")
    parser.add_argument(
        "--parallel", type=positive_option, metavar="P", help="decode at most P samples at once"
    )
    parser.add_argument("--max-tokens", type=positive_option, metavar="N", help="per sample")
    parser.add_argument("--out", type=Path, help="append results here; a rerun resumes")
    parser.add_argument(
        "--hub", metavar="DATASET", help="download PROBLEMS.jsonl from this Hugging Face dataset"
    )
    parser.add_argument("--temperature", type=float, default=FATHOM_TEMPERATURE)
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--n-ctx", type=positive_option, default=FATHOM_N_CTX)
    parser.add_argument("--threads", type=positive_option, help="CPU threads")
    add_server_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.server and args.model:
        parser.error("--server runs the model elsewhere: leave out --model")
    logging.getLogger("fathom_desktop.engine").setLevel(logging.CRITICAL)
    try:
        check_sample_count(args.samples)
        path = _download(args.hub, str(args.problems)) if args.hub else args.problems
        problems = read_problems(path)
        done = read_done(args.out) if args.out else {}
        return _run(args, problems, done)
    except (EngineError, ConversionError, ProblemSetError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _download(dataset: str, filename: str) -> Path:
    """The problem file from a Hugging Face dataset repository (cached by huggingface-hub)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(huggingface_hub.hf_hub_download(dataset, filename, repo_type="dataset"))
    except RepositoryNotFoundError:
        raise ProblemSetError(f"No dataset {dataset} on the Hugging Face Hub.") from None
    except EntryNotFoundError:
        raise ProblemSetError(f"The dataset {dataset} has no file {filename}.") from None
    except Exception as error:  # the network, the disk, a gated dataset: say which, in one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ProblemSetError(f"Could not download {filename} from {dataset}: {reason}") from None


def _run(args: argparse.Namespace, problems: list[Problem], done: dict[str, ProblemResult]) -> int:
    from tqdm import tqdm

    finished = {p.question: done[p.question] for p in problems if p.question in done}
    todo = [p for p in problems if p.question not in done]
    if finished:
        print(
            f"[{len(finished)} of {len(problems)} problems already in {args.out}]", file=sys.stderr
        )
    sampling = SamplingParams(
        temperature=args.temperature,
        top_p=FATHOM_TOP_P,
        seed=args.seed,
        max_tokens=args.max_tokens,
    )
    control = GenerationControl()
    interrupted = False
    engine = _engine(args)
    try:
        if args.server:
            for note in engine.load().notes:
                print(f"[{note}]", file=sys.stderr)
        else:
            model = args.model or _demo_model()
            engine.load(LoadOptions(model_path=model, n_ctx=args.n_ctx, n_threads=args.threads))
        out = args.out.open("a", encoding="utf-8") if args.out else None
        bar = tqdm(total=len(problems), initial=len(finished), unit="problem", file=sys.stderr)
        try:
            with ctrl_c_cancels(control):
                for problem in todo:
                    vote = evaluate_problem(
                        engine,
                        problem,
                        sampling,
                        args.samples,
                        args.parallel,
                        control,
                        per_request=SAMPLES_PER_REQUEST if args.server else None,
                    )
                    if control.cancel.is_set():
                        interrupted = True  # an interrupted problem is not a result
                        break
                    result = to_result(problem, vote)
                    finished[problem.question] = result
                    if out is not None:
                        _append(out, result)
                    bar.update(1)
                    bar.set_postfix_str(_running_score(list(finished.values())), refresh=False)
        finally:
            bar.close()
            if out is not None:
                out.close()
    finally:
        engine.close()
    # In the problem set's order, whichever run answered each.
    results = [finished[p.question] for p in problems if p.question in finished]
    print_report(results, args.samples, sys.stdout)
    if interrupted:
        print(
            f"[interrupted: {len(results)} of {len(problems)} problems done"
            + (f"; rerun to continue from {args.out}]" if args.out else "]"),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_OK


def _engine(args: argparse.Namespace) -> ChatEngine:
    if args.server:
        return server_engine(args)
    from fathom_desktop.engine import LlamaEngine

    return LlamaEngine()


def _append(out: TextIO, result: ProblemResult) -> None:
    # One whole line per problem, flushed at once: an interruption never leaves half a result.
    out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
    out.flush()


def _running_score(results: list[ProblemResult]) -> str:
    pass1, cons = scores(results)
    return f"pass@1 {pass1:.1%}, cons {cons:.1%}"


def scores(results: list[ProblemResult]) -> tuple[float, float]:
    """(pass@1, cons@K) over `results`: the mean over all samples, the share of right votes."""
    if not results:
        return 0.0, 0.0
    verdicts = [c for r in results for c in r.correct]
    return sum(verdicts) / len(verdicts), sum(r.consensus_correct for r in results) / len(results)


def print_report(results: list[ProblemResult], k: int, out: TextIO) -> None:
    for number, result in enumerate(results, start=1):
        mark = "ok  " if result.consensus_correct else "MISS"
        right = sum(result.correct)
        question = " ".join(result.question.split())
        question = question if len(question) <= 60 else question[:57] + "..."
        print(
            f"{number:>4} {mark} {right}/{len(result.correct)} right, vote {result.vote} "
            f"(expected {result.expected})  {question}",
            file=out,
        )
    pass1, cons = scores(results)
    samples = sum(len(r.correct) for r in results)
    print(
        f"pass@1 {pass1:.1%} ({samples} samples), cons@{k} {cons:.1%} "
        f"({sum(r.consensus_correct for r in results)}/{len(results)} problems)",
        file=out,
    )


def _demo_model() -> Path:
    from convert.progress import NullProgress
    from fathom_desktop import demo

    print(f"[no --model: the demo model {demo.DEMO_NAME}]", file=sys.stderr)
    return demo.ensure_demo_model(NullProgress())


if __name__ == "__main__":
    sys.exit(main())
