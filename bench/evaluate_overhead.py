"""What `fathom-convert evaluate` adds to the forward passes it cannot avoid.

A synthetic Qwen2 at Fathom's 152,064-token vocabulary (about 300 M parameters, most of them in
the embedding and output matrices, so the per-token logits are as large as Fathom's) is converted
to BF16 and quantized to Q8_0. In one run, the script times
- `evaluate(BF16 → Q8_0)` over N chunks of 512 tokens, and
- the bare forward passes over the same chunks: the reference's and the level's, logits only,
and reports their ratio. The difference is the numpy work (coding the reference's distributions,
the full-vocabulary KL-divergence) plus the reference file's I/O; the target is ≤ 25 %.
Timing is by this process's CPU time (llama.cpp's threads included), so other work on a shared
machine does not inflate it; the wall-clock figures are printed too.

    .venv/bin/python bench/evaluate_overhead.py [--chunks 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.evaluate import ROWS_PER_BLOCK, default_text, evaluate  # noqa: E402
from convert.gguf_convert import convert_checkpoint  # noqa: E402
from convert.llama_forward import ForwardModel, ForwardSettings  # noqa: E402
from convert.quantize import quantize  # noqa: E402
from tests.synthetic import Qwen2Shape, build_checkpoint  # noqa: E402

SHAPE = Qwen2Shape(n_layers=4, hidden_size=960, intermediate_size=2560, n_heads=15, n_kv_heads=5)
CTX = 512


def bare_passes(path: Path, settings: ForwardSettings, chunks: list[list[int]]) -> None:
    with ForwardModel(path, settings) as model:
        for chunk in chunks:
            model.chunk_logits(chunk, CTX // 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    settings = ForwardSettings(n_ctx=CTX, n_gpu_layers=0, n_threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="evaluate-bench-") as work:
        folder = Path(work)
        ckpt = build_checkpoint(folder / "ckpt", shape=SHAPE)
        n_params = sum(w.size for w in ckpt.weights.values())
        del ckpt
        bf16 = convert_checkpoint(folder / "ckpt", folder / "bench-BF16.gguf", "bf16").path
        q8 = quantize(bf16, folder / "bench-Q8_0.gguf", "Q8_0", n_threads=args.threads).path
        with ForwardModel(bf16, settings) as model:
            tokens = model.tokenize(default_text().read_text("utf-8"))
            bos = model.bos if model.add_bos else None
        chunks = []
        for i in range(args.chunks):
            chunk = tokens[i * CTX : (i + 1) * CTX]
            chunks.append([bos, *chunk[1:]] if bos is not None else chunk)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        bare_passes(bf16, settings, chunks)
        bare_passes(q8, settings, chunks)
        bare_cpu, bare_wall = time.process_time() - cpu0, time.perf_counter() - wall0

        cpu0, wall0 = time.process_time(), time.perf_counter()
        report = evaluate(bf16, [q8], default_text(), ctx=CTX, chunks=args.chunks,
                          settings=settings, use_cache=False)
        eval_cpu, eval_wall = time.process_time() - cpu0, time.perf_counter() - wall0

    stats = report.results[0].stats
    print(f"model: synthetic Qwen2, {n_params / 1e6:.0f} M parameters, vocabulary 152,064; "
          f"{args.chunks} chunks of {CTX}, {args.threads} threads, rows per block {ROWS_PER_BLOCK}")
    print(f"Q8_0 vs BF16: KLD {stats.kld_mean:.6f}, same top {100 * stats.top1:.2f} %")
    print(f"bare forward passes: {bare_cpu:.1f} s CPU ({bare_wall:.1f} s wall)")
    print(f"evaluate:            {eval_cpu:.1f} s CPU ({eval_wall:.1f} s wall)")
    print(f"overhead: {100 * (eval_cpu / bare_cpu - 1):.1f} % CPU "
          f"({100 * (eval_wall / bare_wall - 1):.1f} % wall); target <= 25 %")


if __name__ == "__main__":
    main()
