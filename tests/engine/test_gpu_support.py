"""A GPU the build cannot drive is caught before loading: the model runs on the CPU, and the
user is told why instead of getting a silent slowdown (old driver) or a crash (old GPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fathom_desktop.engine import gpu_support, llama_backend
from fathom_desktop.engine import llama_engine as engine_module
from fathom_desktop.engine.gpu_support import CudaBuild, gpu_problem, parse_archs
from fathom_desktop.engine.llama_engine import LlamaEngine
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.engine.types import LoadOptions

# llama.cpp's system info as a CUDA build reports it (the format seen from packaging/
# cuda-backend.sh's build), here with llama.cpp's default architecture list.
SYSTEM_INFO = (
    "CUDA : ARCHS = 750,800,860,890,900,1200 | USE_GRAPHS = 1 | FA_QUANTS = q4_0-q4_0,q8_0-q8_0,"
    "f16-f16,bf16-bf16 | CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)
CUDA_13_BUILD = CudaBuild(archs=(750, 800, 860, 890, 900, 1200), runtime_version=13000)
GIB = 2**30


def gpu(name: str, cc: tuple[int, int] | None, driver: int | None) -> GpuInfo:
    return GpuInfo(name, 8 * GIB, 7 * GIB, compute_capability=cc, driver_cuda_version=driver)


def test_architectures_are_read_from_llama_cpps_system_info() -> None:
    assert parse_archs(SYSTEM_INFO) == (750, 800, 860, 890, 900, 1200)
    assert parse_archs("CPU : SSE3 = 1 | AVX2 = 1 | ") == ()  # a CPU build


def test_a_driver_older_than_the_cuda_release_is_named_with_the_version_to_install() -> None:
    problem = gpu_problem(gpu("NVIDIA GeForce RTX 3060", (8, 6), 12040), CUDA_13_BUILD)
    assert problem == (
        "The NVIDIA driver supports CUDA 12.4, and this build needs CUDA 13.0: update the driver "
        "(version 580 or newer) to use the NVIDIA GeForce RTX 3060; running on the CPU."
    )


def test_an_older_minor_release_of_the_same_major_is_fine() -> None:
    build = CudaBuild(archs=(750,), runtime_version=12080)
    assert gpu_problem(gpu("NVIDIA GeForce RTX 3060", (8, 6), 12020), build) is None


def test_a_gpu_older_than_every_compiled_architecture_is_named() -> None:
    problem = gpu_problem(gpu("NVIDIA GeForce GTX 1080", (6, 1), 13000), CUDA_13_BUILD)
    assert problem == (
        "The NVIDIA GeForce GTX 1080 (compute capability 6.1) is older than this build supports "
        "(7.5 and newer); running on the CPU."
    )


@pytest.mark.parametrize(
    ("name", "cc"),
    [("RTX 2060", (7, 5)), ("RTX 4090", (8, 9)), ("H100", (9, 0)), ("RTX 5090", (12, 0))],
)
def test_supported_gpus_pass(name: str, cc: tuple[int, int]) -> None:
    assert gpu_problem(gpu(name, cc, 13000), CUDA_13_BUILD) is None


def test_unknown_facts_never_block_the_gpu() -> None:
    assert gpu_problem(gpu("Some GPU", None, None), CUDA_13_BUILD) is None
    assert gpu_problem(gpu("Some GPU", (6, 1), 12000), CudaBuild((), None)) is None


def test_the_cuda_runtime_version_comes_from_the_loaded_libcudart(tmp_path: Path) -> None:
    compiler = shutil.which("cc")
    assert compiler, "a C compiler is needed to build the stand-in libcudart"
    source = tmp_path / "cudart.c"
    source.write_text("int cudaRuntimeGetVersion(int *v) { *v = 13000; return 0; }\n")
    library = tmp_path / "libcudart.so.13"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", library, source], check=True)
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f10 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        f"7f20-7f30 r-xp 00000000 08:01 2 {library}\n"
    )
    assert gpu_support.loaded_cuda_runtime_version(maps) == 13000

    maps.write_text("7f00-7f10 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert gpu_support.loaded_cuda_runtime_version(maps) is None  # a CPU build
    assert gpu_support.loaded_cuda_runtime_version(tmp_path / "no-maps") is None


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[llama_backend.OpenParams]:
    """A CUDA build with a GTX 1080 in the machine; records what llama.cpp is asked to do."""
    real_open = llama_backend.open_llama
    calls: list[llama_backend.OpenParams] = []

    def record(params: llama_backend.OpenParams):
        calls.append(params)
        return real_open(params)

    monkeypatch.setattr(llama_backend, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(llama_backend, "open_llama", record)
    monkeypatch.setattr(
        engine_module, "detect_gpu", lambda: gpu("NVIDIA GeForce GTX 1080", (6, 1), 13000)
    )
    monkeypatch.setattr(gpu_support, "current_build", lambda: CUDA_13_BUILD)
    return calls


@pytest.mark.parametrize("asked", [None, -1, 20])
def test_an_unsupported_gpu_is_never_given_a_layer(opened, tiny_gguf_f32: Path, asked) -> None:
    engine = LlamaEngine()
    report = engine.load(LoadOptions(tiny_gguf_f32, n_ctx=256, n_gpu_layers=asked))
    engine.close()
    assert [params.n_gpu_layers for params in opened] == [0]
    assert report.n_gpu_layers == 0
    assert any("GTX 1080 (compute capability 6.1) is older" in note for note in report.notes)


def test_a_supported_gpu_gets_the_layers_asked_for(opened, monkeypatch, tiny_gguf_f32) -> None:
    monkeypatch.setattr(
        engine_module, "detect_gpu", lambda: gpu("NVIDIA GeForce RTX 4060", (8, 9), 13000)
    )
    engine = LlamaEngine()
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=256, n_gpu_layers=3))
    engine.close()
    assert opened[0].n_gpu_layers == 3


def test_a_cuda_build_whose_cuda_did_not_start_says_so_instead_of_cpu_build(
    opened, monkeypatch, tiny_gguf_f32
) -> None:
    # An RTX 3060 on a driver for CUDA 12.4 with the CUDA 13 package: CUDA fails to start and
    # llama.cpp then reports no GPU offload at all, as a CPU build would.
    monkeypatch.setattr(llama_backend, "gpu_offload_supported", lambda: False)
    monkeypatch.setattr(
        engine_module, "detect_gpu", lambda: gpu("NVIDIA GeForce RTX 3060", (8, 6), 12040)
    )
    engine = LlamaEngine()
    report = engine.load(LoadOptions(tiny_gguf_f32, n_ctx=256))
    engine.close()
    assert report.n_gpu_layers == 0
    assert any("update the driver (version 580 or newer)" in note for note in report.notes)

    # Same, but the driver is new enough and CUDA still did not start: no false reason.
    monkeypatch.setattr(
        engine_module, "detect_gpu", lambda: gpu("NVIDIA GeForce RTX 3060", (8, 6), 13000)
    )
    problem = gpu_support.usability_problem(gpu("NVIDIA GeForce RTX 3060", (8, 6), 13000))
    assert problem == "CUDA could not start on the NVIDIA GeForce RTX 3060; running on the CPU."


def test_the_cpu_build_is_named_as_such(monkeypatch) -> None:
    monkeypatch.setattr(gpu_support, "current_build", lambda: CudaBuild((), None))
    assert gpu_support.usability_problem(gpu("RTX 4060", (8, 9), 13000)) == gpu_support.CPU_BUILD
