"""`fathom-convert imatrix` and `quantize --imatrix` against llama.cpp's own tools.

llama-imatrix and llama-quantize are built from the llama.cpp sources of the pinned
llama-cpp-python (`scripts/llama_tools.sh`, run by `make test`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.errors import ConversionError
from convert.evaluate import evaluate
from convert.gguf_convert import convert_checkpoint
from convert.imatrix import Imatrix, compute_imatrix
from convert.llama_forward import ForwardSettings
from convert.quantize import quantize
from fathom_desktop.demo import demo_checkpoint
from tests.conftest import PROJECT_ROOT
from tests.convert.test_evaluate import llama_tool
from tests.synthetic import build_checkpoint

CTX = 128
CHUNKS = 4
CALIBRATION = PROJECT_ROOT / "resources" / "quality" / "calibration.txt"
CPU = ForwardSettings(n_gpu_layers=0, n_threads=2)


@pytest.fixture(scope="module")
def demo_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("imatrix-demo")
    return convert_checkpoint(demo_checkpoint(), folder / "demo-BF16.gguf", "bf16").path


@pytest.fixture(scope="module")
def ours(demo_bf16: Path) -> Path:
    out = demo_bf16.with_name("ours.imatrix.gguf")
    compute_imatrix(demo_bf16, out, CALIBRATION, ctx=CTX, chunks=CHUNKS, settings=CPU)
    return out


@pytest.fixture(scope="module")
def theirs(demo_bf16: Path) -> Path:
    out = demo_bf16.with_name("theirs.imatrix.gguf")
    subprocess.run(
        [str(llama_tool("llama-imatrix")), "-m", str(demo_bf16), "-f", str(CALIBRATION),
         "-c", str(CTX), "-b", str(CTX), "--chunks", str(CHUNKS), "-t", "2", "-ngl", "0",
         "-o", str(out)],
        check=True, capture_output=True,
    )
    return out


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def test_values_agree_with_llama_imatrix(ours: Path, theirs: Path) -> None:
    mine, reference = _tensors(ours), _tensors(theirs)
    assert mine.keys() == reference.keys()
    assert len(mine) == 2 * 4 * 7  # in_sum2 and counts of the 7 matrices of each of 4 blocks
    for name, expected in reference.items():
        got = mine[name]
        assert got.shape == expected.shape, name
        # llama.cpp sums in float32 one token after another; we sum in float64.
        scale = np.abs(expected) + 1e-12
        assert np.max(np.abs(got - expected) / scale) <= 1e-3, name
    meta = gguf.GGUFReader(ours).fields
    assert meta[gguf.Keys.IMatrix.CHUNK_COUNT].contents() == CHUNKS
    assert meta[gguf.Keys.IMatrix.CHUNK_SIZE].contents() == CTX


@pytest.mark.parametrize("quant", ["Q2_K", "Q3_K_M", "Q4_K_M", "IQ4_XS"])
def test_quantizing_with_our_imatrix_matches_llama_quantize(
    demo_bf16: Path, ours: Path, tmp_path: Path, quant: str
) -> None:
    mine = quantize(demo_bf16, tmp_path / f"ours-{quant}.gguf", quant, n_threads=2, imatrix=ours)
    theirs = tmp_path / f"theirs-{quant}.gguf"
    subprocess.run(
        [str(llama_tool("llama-quantize")), "--imatrix", str(ours), str(demo_bf16), str(theirs),
         quant, "2"],
        check=True, capture_output=True,
    )
    a, b = gguf.GGUFReader(mine.path), gguf.GGUFReader(theirs)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert x.tensor_type == y.tensor_type, x.name
        assert x.data.tobytes() == y.data.tobytes(), x.name
    without = quantize(demo_bf16, tmp_path / f"plain-{quant}.gguf", quant, n_threads=2)
    differs = [
        t.name for t, u in zip(a.tensors, gguf.GGUFReader(without.path).tensors, strict=True)
        if t.data.tobytes() != u.data.tobytes()
    ]
    assert differs  # the imatrix changed how the blocks were quantized


def test_the_imatrix_lowers_what_q2_k_loses(demo_bf16: Path, ours: Path, tmp_path: Path):
    plain = quantize(demo_bf16, tmp_path / "plain-Q2_K.gguf", "Q2_K", n_threads=2).path
    guided = quantize(demo_bf16, tmp_path / "im-Q2_K.gguf", "Q2_K", n_threads=2, imatrix=ours).path
    report = evaluate(demo_bf16, [plain, guided], ctx=CTX, chunks=8, settings=CPU, use_cache=False)
    kld_plain, kld_guided = (r.stats.kld_mean for r in report.results)
    assert kld_guided < kld_plain


def test_an_imatrix_for_another_model_is_refused(ours: Path, tmp_path: Path) -> None:
    other = build_checkpoint(tmp_path / "other")
    bf16 = convert_checkpoint(other.path, tmp_path / "other-BF16.gguf", "bf16").path
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "convert", "quantize", str(bf16), "--type", "Q4_K_M",
         "--out-dir", str(out), "--imatrix", str(ours)],
        capture_output=True, text=True, cwd=PROJECT_ROOT,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.strip()]
    assert "was made for another model" in line
    assert list(out.iterdir()) == []


def test_a_file_that_is_not_an_imatrix_is_refused(demo_bf16: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="not an imatrix GGUF"):
        Imatrix.read(demo_bf16)
