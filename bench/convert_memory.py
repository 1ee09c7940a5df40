"""Peak memory and throughput of the HF -> GGUF conversion at Fathom-R1-14B's full width.

    PYTHONPATH=. .venv/bin/python bench/convert_memory.py [--layers 2 4] [--outtypes bf16 f16]

Builds BF16 checkpoints with Fathom's real widths (hidden 5120, FFN 13824, vocab 152,064,
40 query / 8 KV heads) and N layers, sharded at ~2 GB like the published one, plus the real R1
tokenizer. Each is converted in a fresh process; its peak RSS is read with
getrusage(RUSAGE_CHILDREN) by a launcher process that runs nothing else, so one measurement cannot
leak into the next. The baseline is `cp` of the same shard files followed by `sync` of the copies.

Page cache: the shards are written here moments before they are read, so both runs would read
them from memory. Before every timed run (cp and convert alike) the shards are flushed and
evicted from the page cache with posix_fadvise(DONTNEED), so both read from disk; both also end
with the output synced to disk (convert fsyncs in atomic_output; cp is followed by sync).

Targets: peak RSS the same for every N and under 2.5 GB; throughput >= half of cp's.
Needs about 2 x (1.1 GB x N + 3.1 GB) of free space in --workdir; everything is deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from tests.synthetic import (  # noqa: E402
    FATHOM_WIDTH,
    ChatTemplate,
    Qwen2Shape,
    bf16_bits,
    qwen2_config,
    safetensors_header,
    shard_name,
)

SHARD_BYTES = 2 << 30
BLOCK_ELEMENTS = 32 << 20  # one random block, tiled: generation must not dominate the run


@dataclass(frozen=True)
class Run:
    label: str
    seconds: float
    n_bytes: int
    peak_rss: int | None = None
    cpu_seconds: float | None = None

    @property
    def mb_per_s(self) -> float:
        return self.n_bytes / self.seconds / 1e6


def tensor_layout(shape: Qwen2Shape) -> dict[str, tuple[int, ...]]:
    from convert.checkpoint import Qwen2HParams, expected_shapes

    config = qwen2_config(shape, tied=False, dtype="BF16")
    return expected_shapes(Qwen2HParams.from_config(config))


def write_checkpoint(folder: Path, shape: Qwen2Shape) -> list[Path]:
    """A full-width BF16 checkpoint, streamed to disk from one tiled block of random bits."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(qwen2_config(shape, tied=False, dtype="BF16")))
    tokenizer = PROJECT_ROOT / "tests" / "fixtures" / "r1-distill-qwen-tokenizer"
    shutil.copyfile(tokenizer / "tokenizer.json", folder / "tokenizer.json")
    shutil.copyfile(tokenizer / ChatTemplate.CURRENT.value, folder / "tokenizer_config.json")

    rng = np.random.default_rng(0)
    # Weights as a trained checkpoint has them (about N(0, 0.02)); the numbers matter for the
    # f16 path, whose conversion cost depends on how many values fall below f16's normal range.
    block = bf16_bits(rng.standard_normal(BLOCK_ELEMENTS, dtype=np.float32) * np.float32(0.02))

    groups: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for name, dims in tensor_layout(shape).items():
        nbytes = int(np.prod(dims)) * 2
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append({})
            size = 0
        groups[-1][name] = dims
        size += nbytes
    paths, weight_map = [], {}
    for i, group in enumerate(groups, start=1):
        path = folder / shard_name(i, len(groups))
        layout = {name: ("BF16", dims, int(np.prod(dims)) * 2) for name, dims in group.items()}
        with open(path, "wb") as f:
            f.write(safetensors_header(layout))
            for dims in group.values():
                remaining = int(np.prod(dims))
                while remaining:
                    n = min(remaining, BLOCK_ELEMENTS)
                    f.write(memoryview(block[:n]))
                    remaining -= n
            f.flush()
            os.fsync(f.fileno())
        weight_map.update(dict.fromkeys(group, path.name))
        paths.append(path)
    index = {
        "metadata": {"total_size": sum(p.stat().st_size for p in paths)},
        "weight_map": weight_map,
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return paths


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_cp(shards: list[Path], out_dir: Path) -> Run:
    out_dir.mkdir()
    evict(shards)
    start = time.perf_counter()
    subprocess.run(["cp", *map(str, shards), str(out_dir)], check=True)
    copies = sorted(out_dir.iterdir())
    subprocess.run(["sync", *map(str, copies)], check=True)
    seconds = time.perf_counter() - start
    n_bytes = sum(p.stat().st_size for p in copies)
    shutil.rmtree(out_dir)
    return Run("cp + sync", seconds, n_bytes)


def time_convert(ckpt: Path, shards: list[Path], out: Path, outtype: str) -> Run:
    evict(shards)
    launcher = [sys.executable, __file__, "--measure", str(ckpt), str(out), outtype]
    report = json.loads(subprocess.run(launcher, check=True, capture_output=True, text=True).stdout)
    out.unlink()
    return Run(
        f"convert -> {outtype}",
        report["seconds"],
        report["n_bytes"],
        report["peak_rss"],
        report["cpu_seconds"],
    )


def measure(ckpt: str, out: str, outtype: str) -> None:
    """Launcher: run one conversion in a child; report its time and the child's peak RSS."""
    child = [sys.executable, __file__, "--convert", ckpt, out, outtype]
    result = subprocess.run(child, check=True, capture_output=True, text=True)
    report = json.loads(result.stdout)
    # ru_maxrss is in KiB on Linux; this launcher has no other children.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["peak_rss"] = usage.ru_maxrss * 1024
    # CPU time shows what the conversion costs beyond waiting for the disk.
    report["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(report))


def convert_once(ckpt: str, out: str, outtype: str) -> None:
    from convert.gguf_convert import convert_checkpoint

    start = time.perf_counter()
    result = convert_checkpoint(Path(ckpt), Path(out), outtype)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "n_bytes": result.n_bytes}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--outtypes", nargs="+", default=["bf16"], choices=["bf16", "f16", "f32"])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()

    print(f"{'layers':>6} {'run':<16} {'GB':>6} {'s':>7} {'MB/s':>7} {'peak RSS':>9} {'CPU s':>6}")
    rows: dict[tuple[int, str], Run] = {}
    for n_layers in args.layers:
        shape = Qwen2Shape(**{**FATHOM_WIDTH.__dict__, "n_layers": n_layers})
        work = Path(tempfile.mkdtemp(prefix="convert-memory-", dir=args.workdir))
        try:
            shards = write_checkpoint(work / "ckpt", shape)
            runs = [time_cp(shards, work / "cp")]
            for outtype in args.outtypes:
                runs.append(time_convert(work / "ckpt", shards, work / "out.gguf", outtype))
            for run in runs:
                rss = f"{run.peak_rss / 2**20:5.0f} MiB" if run.peak_rss else ""
                cpu = f"{run.cpu_seconds:6.1f}" if run.cpu_seconds is not None else ""
                print(
                    f"{n_layers:>6} {run.label:<16} {run.n_bytes / 1e9:6.2f} "
                    f"{run.seconds:7.1f} {run.mb_per_s:7.0f} {rss:>9} {cpu:>6}",
                    flush=True,
                )
                rows[(n_layers, run.label)] = run
        finally:
            shutil.rmtree(work, ignore_errors=True)

    ok = True
    for outtype in args.outtypes:
        label = f"convert -> {outtype}"
        peaks = [rows[(n, label)].peak_rss or 0 for n in args.layers]
        spread = (max(peaks) - min(peaks)) / 2**20
        ratio = min(
            rows[(n, label)].mb_per_s / rows[(n, "cp + sync")].mb_per_s for n in args.layers
        )
        print(
            f"{label}: peak RSS {min(peaks) / 2**20:.0f}-{max(peaks) / 2**20:.0f} MiB "
            f"(spread {spread:.0f} MiB over {args.layers} layers); "
            f"throughput >= {ratio:.2f} x cp"
        )
        ok &= max(peaks) < 2.5e9 and spread < 64 and (outtype != "bf16" or ratio >= 0.5)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] in ("--measure", "--convert"):
        (measure if sys.argv[1] == "--measure" else convert_once)(*sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
