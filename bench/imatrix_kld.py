"""What an importance matrix buys at the low levels: KLD with and without one.

Converts a checkpoint (default: the demo model, fathom-tiny) to BF16, computes its importance
matrix on the shipped calibration text, makes Q4_K_M, IQ4_XS, Q3_K_M and Q2_K with and without
it, and measures every file against the BF16 on the shipped evaluation text (a different text).

    .venv/bin/python bench/imatrix_kld.py [--checkpoint DIR] [--chunks 50] [--imatrix-chunks 100]
    .venv/bin/python bench/imatrix_kld.py --fathom-width 1 --chunks 8 --imatrix-chunks 16

`--fathom-width N` measures a synthetic model with Fathom-R1-14B's matrix shapes and N blocks
(bench/fathom_width.py), whose 5,120- and 13,824-wide rows take the k-quants' 256-wide blocks as
the real model's do.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.evaluate import evaluate  # noqa: E402
from convert.gguf_convert import convert_checkpoint  # noqa: E402
from convert.imatrix import compute_imatrix  # noqa: E402
from convert.llama_forward import ForwardSettings  # noqa: E402
from convert.quantize import quantize  # noqa: E402
from fathom_desktop.demo import demo_checkpoint  # noqa: E402

LEVELS = ("Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the demo model")
    parser.add_argument("--chunks", type=int, default=50, help="evaluation chunks of 512")
    parser.add_argument("--imatrix-chunks", type=int, default=100)
    parser.add_argument("--fathom-width", type=int, metavar="BLOCKS",
                        help="a synthetic model at Fathom's width with this many blocks")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    settings = ForwardSettings(n_gpu_layers=0, n_threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="imatrix-bench-") as work:
        folder = Path(work)
        if args.fathom_width:
            from bench.fathom_width import write_fathom_width_checkpoint

            checkpoint = write_fathom_width_checkpoint(
                folder / "fathom-width-checkpoint", blocks=args.fathom_width
            )
        else:
            checkpoint = args.checkpoint or demo_checkpoint()
        bf16 = convert_checkpoint(checkpoint, folder / "model-BF16.gguf", "bf16").path
        if args.fathom_width:  # the safetensors copy is no longer needed: free the disk
            shutil.rmtree(checkpoint)
        imatrix = compute_imatrix(
            bf16, folder / "imatrix.gguf", chunks=args.imatrix_chunks, settings=settings
        ).path
        files = {}
        for level in LEVELS:
            files[level, False] = quantize(bf16, folder / f"{level}.gguf", level).path
            files[level, True] = quantize(
                bf16, folder / f"{level}-imatrix.gguf", level, imatrix=imatrix
            ).path
        report = evaluate(bf16, list(files.values()), ctx=512, chunks=args.chunks,
                          settings=settings, use_cache=False)
    stats = {key: r.stats for key, r in zip(files, report.results, strict=True)}
    print(f"{checkpoint.name}: {report.chunks} evaluation chunks of 512 "
          f"({report.results[0].stats.tokens} scored tokens), imatrix on "
          f"{args.imatrix_chunks} calibration chunks")
    print("| level | KLD without | KLD with imatrix | change | same top without | with |")
    print("|---|---|---|---|---|---|")
    for level in LEVELS:
        plain, guided = stats[level, False], stats[level, True]
        change = 100 * (guided.kld_mean / plain.kld_mean - 1)
        print(f"| {level} | {plain.kld_mean:.5f} | {guided.kld_mean:.5f} | {change:+.0f} % | "
              f"{100 * plain.top1:.2f} % | {100 * guided.top1:.2f} % |")


if __name__ == "__main__":
    main()
