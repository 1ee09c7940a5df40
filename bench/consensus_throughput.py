"""Self-consistency throughput: K samples one after another against K samples in one batch.

    PYTHONPATH=. .venv/bin/python bench/consensus_throughput.py [--k 8] [--tokens 512]
        [--parallel 8] [--threads 2] [--model FILE.gguf] [--keep DIR]

Model: a synthetic Qwen2 of about 300 M parameters with Fathom's vocabulary (152,064 rows,
untied embedding and output, 12 blocks of width 768; random weights), written as a Hugging Face
checkpoint by tests/synthetic.py, converted by convert/ and quantized to Q8_0 by the project's
quantizer. At this size a decode step reads ~330 MB of weights, so one step is bound by memory
reads, as Fathom-R1-14B's are on a GPU.

Both runs use LlamaEngine.consensus on the same loaded model with Fathom's sampling (T 0.6,
top-p 0.95, seed 1234): first with parallel=1 (the sequential path: one sample after another),
then with parallel=P (engine/batched.py). End-of-generation is ignored so that every sample is
exactly --tokens long. Aggregate tokens/s = all samples' tokens / wall time of the whole
consensus (prompt included). The process's CPU time is shown beside it: other work on a shared
machine stretches wall time, not CPU time. Exits 1 when the ratio is under --target (2.5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fathom_desktop.engine import LlamaEngine  # noqa: E402
from fathom_desktop.engine.types import ChatMessage, LoadOptions, SamplingParams  # noqa: E402

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


@dataclass(frozen=True)
class Run:
    parallel: int
    tokens: int
    wall_s: float
    cpu_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.cpu_s


def run(engine: LlamaEngine, k: int, n_tokens: int, parallel: int) -> Run:
    sampling = SamplingParams(seed=SEED, max_tokens=n_tokens)
    wall, cpu = time.perf_counter(), time.process_time()
    result = engine.consensus(PROMPT, sampling, k, parallel=parallel)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(s.stats.reasoning_tokens + s.stats.answer_tokens for s in result.samples)
    assert tokens == k * n_tokens, f"expected {k} x {n_tokens} tokens, got {tokens}"
    assert result.parallel == parallel, result.parallel_reason
    return Run(parallel, tokens, wall, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
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
        engine = LlamaEngine(stop_at_end_of_generation=False)
        prompt_room = 64
        engine.load(
            LoadOptions(
                model,
                n_ctx=prompt_room + args.tokens + 16,
                n_gpu_layers=0,
                n_threads=args.threads,
            )
        )
        try:
            print(f"model: {model.name}, {model.stat().st_size / 1e6:.0f} MB", flush=True)
            sequential = run(engine, args.k, args.tokens, 1)
            print(_line("sequential", sequential), flush=True)
            parallel = run(engine, args.k, args.tokens, args.parallel)
            print(_line(f"parallel P={args.parallel}", parallel), flush=True)
        finally:
            engine.close()
    ratio = parallel.tokens_per_s / sequential.tokens_per_s
    cpu_ratio = parallel.tokens_per_cpu_s / sequential.tokens_per_cpu_s
    print(
        f"ratio: {ratio:.2f}x wall-clock ({cpu_ratio:.2f}x per CPU second); target {args.target}x"
    )
    return 0 if ratio >= args.target else 1


def _line(name: str, result: Run) -> str:
    # The 1-minute load average at the end: a shared machine's other work shows here.
    return (
        f"{name:>14}: {result.tokens} tokens in {result.wall_s:.1f} s = "
        f"{result.tokens_per_s:.1f} tokens/s ({result.tokens_per_cpu_s:.1f} per CPU second; "
        f"load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    sys.exit(main())
