"""The engine's streaming overhead: LlamaEngine.generate() against a bare llama-cpp-python loop.

Both decode the same small converter-made GGUF (random weights, real R1 tokenizer) at n_ctx
16,384 on the CPU, with the same sampling and thread count, for a forced length (end-of-sequence
ignored). They run in the same process, interleaved in blocks (engine, bare, bare, engine, ...),
so that a machine shared with other work slows both alike; each block is timed by the wall clock
and by this process's CPU time (which other processes on a busy machine do not inflate). The
ratio of tokens/s over the first and the last 1,000 tokens should be >= 0.97: the engine's
per-token cost (incremental detokenizing, the reasoning split, typed events) must stay flat
across the context.

The app runs the engine in a child process (ProcessEngine and the engine host), so a third
stream goes through that hop: the same engine in the host, its events crossing the pipe. The
host does not wait for its reader, so between its blocks it is paused (SIGSTOP / SIGCONT) and its
CPU time is the host's and this process's together. Its ratio to the bare loop over all tokens
should be >= 0.97. Before the long streams, the time to first token of short replies is
measured in-process and through the host, interleaved; the median difference is what the hop
adds (target <= 20 ms).

    .venv/bin/python bench/engine_overhead.py [--tokens 16000] [--block 250] [--model FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp  # noqa: E402

from fathom_desktop.engine import LlamaEngine  # noqa: E402
from fathom_desktop.engine.llama_backend import Detokenizer  # noqa: E402
from fathom_desktop.engine.process_engine import ProcessEngine  # noqa: E402
from fathom_desktop.engine.reasoning import ReasoningSplitter  # noqa: E402
from fathom_desktop.engine.types import (  # noqa: E402
    FATHOM_TEMPERATURE,
    FATHOM_TOP_P,
    ChatMessage,
    Finished,
    LoadOptions,
    SamplingParams,
    TextDelta,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
N_CTX = 16384
SEED = 1234
PROMPT = [ChatMessage("user", "Prove that the square root of two is irrational.")]


def build_model(folder: Path, layers: int, hidden: int) -> Path:
    """A converter-made GGUF: synthetic checkpoint (tests/synthetic.py) through convert/."""
    from convert.gguf_convert import convert_checkpoint
    from tests.synthetic import Qwen2Shape, build_checkpoint

    shape = Qwen2Shape(
        n_layers=layers,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        n_heads=hidden // 64,
        n_kv_heads=max(1, hidden // 128),
        context_length=N_CTX,
    )
    checkpoint = build_checkpoint(folder / "ckpt", shape=shape)
    return convert_checkpoint(checkpoint.path, folder / "bench-F16.gguf", "f16").path


def forced_length_engine() -> LlamaEngine:
    """The engine host's factory for the process stream: the end-of-sequence is ignored."""
    return LlamaEngine(stop_at_end_of_generation=False)


FORCED_LENGTH_FACTORY = "bench.engine_overhead:forced_length_engine"


@dataclass
class Stream:
    """A token stream that can be advanced by a number of tokens, timing each block."""

    name: str
    advance: Callable[[int], int]  # advance(n) -> tokens actually produced
    # (first token index, count, wall seconds, process CPU seconds)
    blocks: list[tuple[int, int, float, float]]
    produced: int = 0
    cpu_clock: Callable[[], float] = time.process_time

    def run_block(self, n: int) -> None:
        wall, cpu = time.perf_counter(), self.cpu_clock()
        count = self.advance(n)
        self.blocks.append(
            (self.produced, count, time.perf_counter() - wall, self.cpu_clock() - cpu)
        )
        self.produced += count

    def block_rates(self, first: int, last: int) -> list[float]:
        """CPU-time tokens/s of each block within [first, last), in run order."""
        return [c / pc for i, c, _, pc in self.blocks if i >= first and i + c <= last]

    def rate(self, first: int, last: int, *, cpu: bool = False) -> float:
        """Tokens per second (wall or CPU) over the blocks within token positions [first, last)."""
        chosen = [
            (c, pc if cpu else w) for i, c, w, pc in self.blocks if i >= first and i + c <= last
        ]
        return sum(c for c, _ in chosen) / sum(s for _, s in chosen)


def engine_stream(model: Path, total: int, n_threads: int | None) -> tuple[Stream, LlamaEngine]:
    engine = LlamaEngine(stop_at_end_of_generation=False)
    engine.load(LoadOptions(model, n_ctx=N_CTX, n_threads=n_threads, flash_attn=True))
    sampling = SamplingParams(seed=SEED, max_tokens=total + 1)
    events = iter(engine.generate(PROMPT, sampling))
    next(events)  # PhaseChanged(PROMPT): the prompt is evaluated on the next step
    base = 0

    def advance(n: int) -> int:
        nonlocal base
        target = engine.n_past + n
        for _ in events:  # every event is consumed, exactly as a front end would
            if engine.n_past >= target:
                break
        produced = engine.n_past - base
        base = engine.n_past
        return produced

    advance(1)  # prompt and first token: not part of the decode timing
    return Stream("engine", advance, []), engine


def _child_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def process_stream(model: Path, total: int, n_threads: int | None) -> tuple[Stream, ProcessEngine]:
    engine = ProcessEngine(factory=FORCED_LENGTH_FACTORY)
    engine.load(LoadOptions(model, n_ctx=N_CTX, n_threads=n_threads, flash_attn=True))
    pid = engine.pid
    assert pid is not None
    sampling = SamplingParams(seed=SEED, max_tokens=total + 1)
    events = iter(engine.generate(PROMPT, sampling))

    def advance(n: int) -> int:
        os.kill(pid, signal.SIGCONT)
        produced = 0
        for event in events:
            if isinstance(event, TextDelta):
                produced += event.tokens  # the engine's own count, as the window sums it
                if produced >= n:
                    break
        os.kill(pid, signal.SIGSTOP)  # no work behind the other streams' backs
        return produced

    advance(1)
    stream = Stream(
        "through the engine host",
        advance,
        [],
        cpu_clock=lambda: time.process_time() + _child_cpu_s(pid),
    )
    return stream, engine


def hop_latency(model: Path, n_threads: int | None, runs: int) -> tuple[float, float]:
    """Median seconds from generate() to the first text, in-process and through the host."""
    options = LoadOptions(model, n_ctx=2048, n_threads=n_threads, flash_attn=True)
    local = LlamaEngine()
    local.load(options)
    remote = ProcessEngine()
    remote.load(options)
    timings: dict[str, list[float]] = {"local": [], "host": []}
    try:
        for run in range(runs):
            for name, engine in (("local", local), ("host", remote))[:: 1 if run % 2 else -1]:
                sampling = SamplingParams(seed=SEED + run, max_tokens=4)
                start = time.perf_counter()
                first: float | None = None
                for event in engine.generate(PROMPT, sampling):  # read to the end, untimed
                    if first is None and isinstance(event, TextDelta | Finished):
                        first = time.perf_counter() - start
                assert first is not None
                timings[name].append(first)
    finally:
        local.close()
        remote.close()
    return statistics.median(timings["local"]), statistics.median(timings["host"])


def bare_stream(
    model: Path, prompt: list[int], n_threads: int | None
) -> tuple[Stream, llama_cpp.Llama]:
    llama = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=N_CTX,
        n_batch=512,
        n_ubatch=512,
        n_threads=n_threads,
        flash_attn=True,
        type_k=llama_cpp.GGML_TYPE_F16,
        type_v=llama_cpp.GGML_TYPE_F16,
        logits_all=False,
        verbose=False,
        seed=SEED,
    )
    tokens: Iterator[int] = llama.generate(
        prompt, top_k=40, top_p=FATHOM_TOP_P, min_p=0.0, temp=FATHOM_TEMPERATURE, repeat_penalty=1.0
    )

    def advance(n: int) -> int:
        for count, _ in enumerate(tokens, start=1):
            if count == n:
                return n
        raise RuntimeError("the bare loop ended early")

    advance(1)
    return Stream("bare llama-cpp-python", advance, []), llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16000)
    parser.add_argument("--block", type=int, default=250)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", type=Path, help="an existing GGUF instead of a fresh one")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--latency-only", action="store_true", help="skip the long streams")
    args = parser.parse_args()
    # The engine host imports this module for its factory.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p
    )

    with tempfile.TemporaryDirectory(prefix="fathom-bench-") as scratch:
        model = args.model or build_model(Path(scratch), args.layers, args.hidden)
        local_ttft, host_ttft = hop_latency(model, args.threads, args.latency_runs)
        if args.latency_only:
            print(_latency_line(args.latency_runs, local_ttft, host_ttft))
            return
        engine_s, engine = engine_stream(model, args.tokens, args.threads)
        prompt = engine.prompt_tokens(PROMPT)
        bare_s, llama = bare_stream(model, prompt, args.threads)
        process_s, process_engine = process_stream(model, args.tokens, args.threads)
        print(
            f"model: {model.name}, {model.stat().st_size / 2**20:.0f} MiB; n_ctx {N_CTX}; "
            f"threads {llama.n_threads}; {args.tokens} tokens in blocks of {args.block}, "
            "interleaved in rotating order (engine, bare, host; bare, host, engine; ...)",
            flush=True,
        )
        order = [engine_s, bare_s, process_s]
        while engine_s.produced < args.tokens:
            n = min(args.block, args.tokens - engine_s.produced)
            for stream in order:
                stream.run_block(n)
            order = order[1:] + order[:1]  # no stream always goes first
            if engine_s.produced % 2000 < n:
                print(f"  {engine_s.produced:>6} tokens", flush=True)
        bookkeeping_us = bookkeeping_cost(engine, args.tokens)
        engine.close()
        llama.close()
        if process_engine.pid is not None:
            os.kill(process_engine.pid, signal.SIGCONT)
        process_engine.close()

    windows = {
        f"first {args.window:,}": (0, args.window),
        f"last {args.window:,}": (args.tokens - args.window, args.tokens),
        "all": (0, args.tokens),
    }
    for measured in (engine_s, process_s):
        print(
            f"\n{measured.name}:\n| window | tok/s | bare tok/s | ratio (wall) | ratio (CPU time) "
            "| median ratio of paired blocks (CPU) |"
        )
        print("|---|---|---|---|---|---|")
        for label, (a, b) in windows.items():
            e, r = measured.rate(a, b), bare_s.rate(a, b)
            cpu_ratio = measured.rate(a, b, cpu=True) / bare_s.rate(a, b, cpu=True)
            pairs = zip(measured.block_rates(a, b), bare_s.block_rates(a, b), strict=False)
            paired = statistics.median(x / y for x, y in pairs)
            print(f"| {label} | {e:.1f} | {r:.1f} | {e / r:.3f} | {cpu_ratio:.3f} | {paired:.3f} |")
    print("\n" + _latency_line(args.latency_runs, local_ttft, host_ttft))
    per_token_ms = 1000 / bare_s.rate(0, args.tokens, cpu=True)
    print(
        f"\nThe engine's own per-token work (token_to_piece, UTF-8 decoding, reasoning split, "
        f"events), timed alone over {args.tokens:,} tokens: {bookkeeping_us:.1f} µs per token, "
        f"against {per_token_ms:.1f} ms of CPU per token for the bare decode loop "
        f"({bookkeeping_us / 10 / per_token_ms:.2f}%)."
    )


def _latency_line(runs: int, local_s: float, host_s: float) -> str:
    return (
        f"Time to first text ({runs} short replies each, median): in-process "
        f"{local_s * 1000:.1f} ms, through the engine host {host_s * 1000:.1f} ms; "
        f"the hop adds {(host_s - local_s) * 1000:.1f} ms."
    )


def bookkeeping_cost(engine: LlamaEngine, n: int) -> float:
    """Microseconds per token for what the engine adds around llama.cpp's decode and sampling."""
    vocab = engine._model.setup.vocab  # type: ignore[union-attr]
    ids = random.Random(SEED).choices(range(151643), k=n)
    detokenizer = Detokenizer(vocab, render_special=False)
    splitter = ReasoningSplitter(starts_in_reasoning=True)
    kept: list[TextDelta] = []
    start = time.perf_counter()
    for token in ids:
        for delta in splitter.feed(detokenizer.push(token)):
            kept.append(delta)
    return (time.perf_counter() - start) / n * 1e6


if __name__ == "__main__":
    main()
