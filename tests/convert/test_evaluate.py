"""`fathom-convert evaluate` against llama.cpp's own llama-perplexity, and its refusals.

The oracle is llama-perplexity built from the llama.cpp sources of the pinned llama-cpp-python
(`scripts/llama_tools.sh`, which `make test` runs): the same text, chunks and files must give the
same KL-divergence, top-token agreement and perplexities.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convert.errors import ConversionError
from convert.evaluate import evaluate
from convert.gguf_convert import convert_checkpoint
from convert.llama_forward import ForwardSettings
from convert.manifest import MANIFEST_NAME
from convert.quantize import quantize
from fathom_desktop.demo import demo_checkpoint
from tests.conftest import PROJECT_ROOT
from tests.convert.cli_process import interrupt_cli
from tests.synthetic import Qwen2Shape, build_checkpoint

CTX = 128
CHUNKS = 6  # 6 × 63 scored tokens: llama-perplexity prints its summary from 100 tokens on
TEXT = PROJECT_ROOT / "resources" / "quality" / "evaluation.txt"
CPU = ForwardSettings(n_gpu_layers=0, n_threads=2)


def llama_tool(name: str) -> Path:
    folder = os.environ.get("FATHOM_LLAMA_TOOLS") or subprocess.run(
        [str(PROJECT_ROOT / "scripts" / "llama_tools.sh"), "--print-dir"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    tool = Path(folder) / name
    if not tool.is_file():
        pytest.fail(f"{tool} is missing: run scripts/llama_tools.sh (make test does) to build it")
    return tool


@pytest.fixture(scope="module")
def demo_levels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model's BF16 reference and three levels, made by the real pipeline."""
    folder = tmp_path_factory.mktemp("demo-levels")
    bf16 = convert_checkpoint(demo_checkpoint(), folder / "demo-BF16.gguf", "bf16").path
    levels = {"BF16": bf16}
    for name in ("Q8_0", "Q4_K_M", "Q2_K"):
        levels[name] = quantize(bf16, folder / f"demo-{name}.gguf", name, n_threads=2).path
    return levels


def _oracle(reference: Path, level: Path, work: Path) -> dict[str, float]:
    """llama-perplexity's own statistics for `level` against `reference`."""
    perplexity = llama_tool("llama-perplexity")
    base = work / f"{reference.stem}.kld"
    common = ["-f", str(TEXT), "-c", str(CTX), "-b", str(CTX), "--chunks", str(CHUNKS),
              "-t", "2", "-ngl", "0"]
    if not base.exists():
        subprocess.run([str(perplexity), "-m", str(reference), *common,
                        "--kl-divergence-base", str(base)], check=True, capture_output=True)
    # Into a file, not a pipe: llama.cpp prints through a logging thread, and writing to a pipe
    # its summary lines were seen lost at exit.
    out = work / f"{level.stem}.log"
    with open(out, "w") as sink:
        subprocess.run(
            [str(perplexity), "-m", str(level), *common, "--kl-divergence-base", str(base),
             "--kl-divergence"],
            check=True, stdout=sink, stderr=subprocess.STDOUT,
        )
    log = out.read_text()

    def number(label: str) -> float:
        match = re.search(re.escape(label) + r"\s*:\s*(-?[\d.]+)", log)
        assert match, f"llama-perplexity printed no {label!r}:\n{log[-3000:]}"
        return float(match.group(1))

    return {
        "kld_mean": number("Mean    KLD"),
        "kld_p99": number("99.0%   KLD"),
        "top1": number("Same top p") / 100,
        "ppl": number("Mean PPL(Q)"),
        "ppl_reference": number("Mean PPL(base)"),
        "rms_dp": number("RMS Δp") / 100,
    }


def test_statistics_agree_with_llama_perplexity(demo_levels: dict[str, Path], tmp_path: Path):
    levels = [demo_levels[name] for name in ("Q8_0", "Q4_K_M", "Q2_K")]
    report = evaluate(
        demo_levels["BF16"], levels, TEXT, ctx=CTX, chunks=CHUNKS, settings=CPU, use_cache=False
    )
    assert report.chunks == CHUNKS
    klds = []
    for result in report.results:
        ours, theirs = result.stats, _oracle(demo_levels["BF16"], result.file, tmp_path)
        where = f"{result.type}: ours {ours}, llama-perplexity {theirs}"
        assert ours.tokens == CHUNKS * (CTX - 1 - CTX // 2)
        tolerance = max(0.05 * theirs["kld_mean"], 1e-4)
        assert abs(ours.kld_mean - theirs["kld_mean"]) <= tolerance, where
        assert abs(ours.top1 - theirs["top1"]) <= 0.005, where
        assert ours.ppl == pytest.approx(theirs["ppl"], rel=0.005), where
        assert ours.ppl_reference == pytest.approx(theirs["ppl_reference"], rel=0.005), where
        assert ours.kld_p99 == pytest.approx(theirs["kld_p99"], rel=0.05, abs=1e-4), where
        assert ours.rms_dp == pytest.approx(theirs["rms_dp"], rel=0.05, abs=1e-4), where
        klds.append(ours.kld_mean)
    # Fewer bits lose more: the ladder's order shows in what it costs.
    assert klds == sorted(klds) and klds[0] < klds[-1]


def test_json_shape_and_the_manifest_cache(demo_levels: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "levels"
    folder.mkdir()
    reference = shutil.copy(demo_levels["BF16"], folder)
    level = Path(shutil.copy(demo_levels["Q4_K_M"], folder))
    args = ["evaluate", "--reference", str(reference), str(level), "--ctx", str(CTX),
            "--chunks", str(CHUNKS), "--gpu-layers", "0", "--json"]
    first = subprocess.run([sys.executable, "-m", "convert", *args], capture_output=True,
                           text=True, cwd=PROJECT_ROOT, check=True)
    data = json.loads(first.stdout)
    assert set(data) >= {"reference", "text", "results"}
    assert set(data["reference"]) >= {"file", "ppl"} and set(data["text"]) >= {"sha256", "tokens"}
    (row,) = data["results"]
    assert set(row) >= {"file", "type", "size_bytes", "kld_mean", "kld_se", "kld_p99", "top1",
                        "top1_se", "ppl", "ln_ppl_ratio", "rms_dp", "tokens"}
    assert row["type"] == "Q4_K_M" and 0 < row["top1"] <= 1 and not row["cached"]
    recorded = json.loads((folder / MANIFEST_NAME).read_text())["evaluations"]
    assert [e["file"] for e in recorded] == [level.name]

    again = subprocess.run([sys.executable, "-m", "convert", *args], capture_output=True,
                           text=True, cwd=PROJECT_ROOT, check=True)
    cached = json.loads(again.stdout)["results"][0]
    assert cached["cached"] and cached["kld_mean"] == row["kld_mean"]

    # Another setup is another measurement, not the cached one.
    other = subprocess.run([sys.executable, "-m", "convert", *args[:-3], "--chunks", "2",
                            "--gpu-layers", "0", "--json"],
                           capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert not json.loads(other.stdout)["results"][0]["cached"]


def _refusal(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "convert", "evaluate", *args, "--gpu-layers", "0"],
                         capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    return lines[0]


def _unchanged(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_text_shorter_than_two_chunks_is_refused(demo_levels: dict[str, Path], tmp_path: Path):
    short = tmp_path / "short.txt"
    short.write_text("Tom has 3 apples. " * 10)
    before = _unchanged(demo_levels["BF16"].parent)
    line = _refusal("--reference", str(demo_levels["BF16"]), str(demo_levels["Q8_0"]),
                    "--text", str(short))
    assert "too short" in line and "fewer than two chunks of 512" in line
    assert _unchanged(demo_levels["BF16"].parent) == before


def test_levels_of_another_model_are_refused(demo_levels: dict[str, Path], tmp_path: Path):
    """Another vocabulary, or the same vocabulary with other layers, is another model."""
    two = build_checkpoint(tmp_path / "a", shape=Qwen2Shape(n_layers=2))
    three = build_checkpoint(tmp_path / "b", shape=Qwen2Shape(n_layers=3))
    ref_two = convert_checkpoint(two.path, tmp_path / "two-BF16.gguf", "bf16").path
    other = convert_checkpoint(three.path, tmp_path / "three-BF16.gguf", "bf16").path
    q_other = quantize(other, tmp_path / "three-Q8_0.gguf", "Q8_0", n_threads=2).path
    before = _unchanged(tmp_path)

    line = _refusal("--reference", str(demo_levels["BF16"]), str(q_other))
    assert "another vocabulary" in line and "three-Q8_0.gguf" in line
    line = _refusal("--reference", str(ref_two), str(q_other))
    assert "quantization of another model" in line
    assert _unchanged(tmp_path) == before


def test_ctrl_c_leaves_no_measurement_and_no_scratch(demo_levels: dict[str, Path], tmp_path: Path):
    folder = tmp_path / "levels"
    folder.mkdir()
    reference = shutil.copy(demo_levels["BF16"], folder)
    level = shutil.copy(demo_levels["Q2_K"], folder)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    code, err = interrupt_cli(
        ["evaluate", "--reference", str(reference), str(level), "--gpu-layers", "0"],
        when=lambda: any(scratch.iterdir()),
        waiting_for="the reference's scratch folder",
        env=env,
    )
    assert code == 130 and "interrupted" in err
    assert list(scratch.iterdir()) == []
    manifest = folder / MANIFEST_NAME
    assert not manifest.exists() or not json.loads(manifest.read_text()).get("evaluations")


def test_a_missing_level_is_one_line(demo_levels: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="No such model file"):
        evaluate(demo_levels["BF16"], [tmp_path / "nope.gguf"], TEXT, settings=CPU)
