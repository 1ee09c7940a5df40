"""Self-consistency throughput: K samples one after another against K samples in one batch.

    PYTHONPATH=. .venv/bin/python bench/consensus_throughput.py [--k 8] [--tokens 512]
        [--parallel 8] [--threads 2] [--slice 4] [--model FILE.gguf] [--keep DIR]

Model: a synthetic Qwen2 of about 300 M parameters with Fathom's vocabulary (152,064 rows,
untied embedding and output, 12 blocks of width 768; random weights), written as a Hugging Face
checkpoint by tests/synthetic.py, converted by convert/ and quantized to Q8_0 by the project's
quantizer. At this size a decode step reads ~330 MB of weights, so one step is bound by memory
reads, as Fathom-R1-14B's are on a GPU.

Both runs use LlamaEngine.consensus with Fathom's sampling (T 0.6, top-p 0.95, seed 1234): one
with parallel=1 (the sequential path: one sample after another), one with parallel=P
(engine/batched.py), each on its own engine over the same model file (the weights are mapped
once). End-of-generation is ignored so that every sample is exactly --tokens long.

On a shared machine the load swings by several times within minutes, so the two runs do not run
one after the other: they take turns in short rounds (--slice seconds each, the other paused
between two of its tokens) until the parallel run has all K samples. Each round is a slice of
the sequential run and the slice of the parallel run right after it, under about the same load;
a round's ratio is the parallel slice's tokens/s over the sequential slice's. The sequential run
stops at the first sample end after that, and its rate counts its whole samples only (positions
0 to --tokens, as the parallel samples cover). Aggregate tokens/s = tokens / the run's own
slices' time. Exits 1 when the median round ratio is under --target (2.5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fathom_desktop.engine import LlamaEngine  # noqa: E402
from fathom_desktop.engine.types import (  # noqa: E402
    ChatMessage,
    Finished,
    FinishReason,
    GenerationControl,
    LoadOptions,
    SamplingParams,
    StreamEvent,
    TextDelta,
)

PROMPT = [ChatMessage("user", "Find all real x such that x^2 - 5x + 6 = 0.")]
SEED = 1234


def build_model(folder: Path, threads: int) -> Path:
    """Synthetic checkpoint -> BF16 GGUF -> Q8_0, through the project's converter and quantizer."""
    from convert.gguf_convert import convert_checkpoint
    from convert.quantize import quantize
    from tests.synthetic import Qwen2Shape, build_checkpoint

    shape = Qwen2Shape(
        n_layers=12,
        hidden_size=768,
        intermediate_size=2048,
        n_heads=12,
        n_kv_heads=2,
        vocab_size=152064,
        context_length=4096,
    )
    checkpoint = build_checkpoint(folder / "ckpt", shape=shape, seed=SEED)
    bf16 = convert_checkpoint(checkpoint.path, folder / "bench-BF16.gguf", "bf16").path
    target = folder / "bench-300M-Q8_0.gguf"
    quantize(bf16, target, "Q8_0", n_threads=threads)
    bf16.unlink()
    return target


SEQUENTIAL, PARALLEL = "sequential", "parallel"


@dataclass(frozen=True)
class Slice:
    run: str
    tokens: int
    seconds: float
    load: float  # the 1-minute load average when it ended

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Turns:
    """Two runs take turns: each goes on for `slice_s`, then waits (between two of its tokens)
    while the other has its turn. A run that is done gives its turns away for good."""

    slice_s: float
    slices: list[Slice] = field(default_factory=list)
    turn: str = SEQUENTIAL
    done: set[str] = field(default_factory=set)
    began: float = 0.0
    tokens: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self, run: str) -> None:
        with self._cond:
            self._wait(run)

    def tokens_done(self, run: str, tokens: int) -> None:
        with self._cond:
            self.tokens += tokens
            if time.perf_counter() - self.began < self.slice_s or self._other(run) in self.done:
                return
            self._close_slice(run)
            self.turn = self._other(run)
            self._cond.notify_all()
            self._wait(run)

    def active_s(self, run: str) -> float:
        """The run's time in closed slices plus its open one."""
        with self._cond:
            closed = sum(s.seconds for s in self.slices if s.run == run)
            return closed + (time.perf_counter() - self.began if self.turn == run else 0.0)

    def finish(self, run: str) -> None:
        with self._cond:
            if self.turn == run:
                self._close_slice(run)
            self.done.add(run)
            self.turn = self._other(run)
            self._cond.notify_all()

    def _wait(self, run: str) -> None:
        while self.turn != run and self._other(run) not in self.done:
            self._cond.wait()
        self.turn = run
        self.began, self.tokens = time.perf_counter(), 0

    def _close_slice(self, run: str) -> None:
        seconds = time.perf_counter() - self.began
        self.slices.append(Slice(run, self.tokens, seconds, os.getloadavg()[0]))

    @staticmethod
    def _other(run: str) -> str:
        return PARALLEL if run == SEQUENTIAL else SEQUENTIAL


@dataclass
class Outcome:
    tokens: int = 0  # in whole samples
    active_s: float = 0.0  # the run's own time up to its last whole sample
    error: BaseException | None = None


def run_in_turns(
    engines: dict[str, LlamaEngine], k: int, n_tokens: int, parallel: int, turns: Turns
) -> dict[str, Outcome]:
    outcomes = {SEQUENTIAL: Outcome(), PARALLEL: Outcome()}
    sequential_control = GenerationControl()

    def on_event(run: str) -> Callable[[int, StreamEvent], None]:
        def handle(_index: int, event: StreamEvent) -> None:
            if isinstance(event, TextDelta) and event.tokens:
                turns.tokens_done(run, event.tokens)
            elif isinstance(event, Finished) and event.stats.finish_reason is FinishReason.LENGTH:
                outcome = outcomes[run]
                outcome.tokens += event.stats.reasoning_tokens + event.stats.answer_tokens
                outcome.active_s = turns.active_s(run)
                if run == SEQUENTIAL and PARALLEL in turns.done:
                    sequential_control.cancel.set()

        return handle

    def work(run: str) -> None:
        try:
            turns.start(run)
            result = engines[run].consensus(
                PROMPT,
                SamplingParams(seed=SEED, max_tokens=n_tokens),
                k,
                sequential_control if run == SEQUENTIAL else GenerationControl(),
                on_event(run),
                parallel=1 if run == SEQUENTIAL else parallel,
            )
            expected = 1 if run == SEQUENTIAL else parallel
            assert result.parallel == expected, result.parallel_reason
        except BaseException as error:  # reported by the main thread
            outcomes[run].error = error
        finally:
            if run == PARALLEL and outcomes[SEQUENTIAL].tokens:
                sequential_control.cancel.set()
            turns.finish(run)

    threads = [threading.Thread(target=work, args=(run,)) for run in (SEQUENTIAL, PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in outcomes.values():
        if outcome.error is not None:
            raise outcome.error
    assert outcomes[PARALLEL].tokens == k * n_tokens, outcomes[PARALLEL]
    return outcomes


def round_ratios(slices: list[Slice]) -> list[float]:
    """Each sequential slice with the parallel slice right after it (both with tokens)."""
    ratios = []
    for first, second in zip(slices, slices[1:], strict=False):
        if first.run == SEQUENTIAL and second.run == PARALLEL and first.rate and second.rate:
            ratios.append(second.rate / first.rate)
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slice", type=float, default=4.0, help="seconds per turn")
    parser.add_argument("--model", type=Path, help="an existing GGUF instead of the synthetic one")
    parser.add_argument("--keep", type=Path, help="build the model into DIR and keep it there")
    parser.add_argument("--target", type=float, default=2.5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="consensus-bench-") as scratch:
        model = args.model
        if model is None:
            folder = args.keep or Path(scratch)
            folder.mkdir(parents=True, exist_ok=True)
            model = folder / "bench-300M-Q8_0.gguf"
            if not model.is_file():
                began = time.perf_counter()
                model = build_model(folder, args.threads)
                print(f"built {model.name} in {time.perf_counter() - began:.0f} s", flush=True)
        options = LoadOptions(
            model, n_ctx=64 + args.tokens + 16, n_gpu_layers=0, n_threads=args.threads
        )
        # Events as decoded (not sample after sample), so that each turn counts its own tokens.
        engines = {
            run: LlamaEngine(stop_at_end_of_generation=False, interleave_samples=True)
            for run in (SEQUENTIAL, PARALLEL)
        }
        try:
            for engine in engines.values():
                engine.load(options)
            print(
                f"model: {model.name}, {model.stat().st_size / 1e6:.0f} MB; K = {args.k} x "
                f"{args.tokens} tokens, P = {args.parallel}, {args.threads} threads, "
                f"{args.slice:g} s turns; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            turns = Turns(args.slice)
            wall = time.perf_counter()
            outcomes = run_in_turns(engines, args.k, args.tokens, args.parallel, turns)
            wall = time.perf_counter() - wall
        finally:
            for engine in engines.values():
                engine.close()
    ratios = round_ratios(turns.slices)
    for number, ratio in enumerate(ratios, start=1):
        print(f"round {number:>3}: {ratio:.2f}x", flush=True)
    rates = {run: o.tokens / o.active_s for run, o in outcomes.items()}
    loads = [s.load for s in turns.slices]
    for run, outcome in outcomes.items():
        print(
            f"{run:>10}: {outcome.tokens} tokens in {outcome.active_s:.1f} s of its turns = "
            f"{rates[run]:.1f} tokens/s"
        )
    median = statistics.median(ratios) if ratios else 0.0
    print(
        f"{len(ratios)} rounds in {wall:.0f} s, load {min(loads):.1f}-{max(loads):.1f}: "
        f"median round {median:.2f}x (rounds {min(ratios, default=0):.2f}-"
        f"{max(ratios, default=0):.2f}x), whole runs {rates[PARALLEL] / rates[SEQUENTIAL]:.2f}x; "
        f"target {args.target}x"
    )
    return 0 if median >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
