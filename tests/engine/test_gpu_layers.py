"""One meaning of "GPU layers": the engine's load report, the planner's badge and the status bar
count the same N, llama.cpp's n_gpu_layers range (the blocks plus the output layer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fathom_desktop.engine import LlamaEngine, gpu_support, llama_backend, llama_engine
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.gpu_support import CudaBuild
from fathom_desktop.engine.planner import GpuInfo, layers_on_gpu, offload_label, plan_offload
from fathom_desktop.engine.types import LoadOptions

ROOMY_GPU = GpuInfo("Fake RTX 4090", 24 * 2**30, 23 * 2**30, (8, 9), 13000)


@pytest.fixture
def cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build on a usable GPU; this machine's llama.cpp (CPU) loads everything on the CPU
    whatever n_gpu_layers says, so the report shows what the engine asked llama.cpp for."""
    monkeypatch.setattr(llama_backend, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(gpu_support, "current_build", lambda: CudaBuild((890,), 13000))
    monkeypatch.setattr(llama_engine, "detect_gpu", lambda: ROOMY_GPU)
    monkeypatch.setattr(gpu_support, "usability_problem", lambda _gpu: None)


def _load(path: Path, n_gpu_layers: int | None):
    engine = LlamaEngine()
    try:
        return engine.load(LoadOptions(path, n_ctx=512, n_gpu_layers=n_gpu_layers))
    finally:
        engine.close()


def test_the_load_report_counts_blocks_plus_the_output_layer(tiny_gguf_f32: Path, cuda_build):
    blocks = check_model_file(tiny_gguf_f32).n_layers
    assert blocks == 2
    plan = plan_offload(tiny_gguf_f32, n_ctx=512, free_vram_bytes=ROOMY_GPU.free_bytes)

    partial = _load(tiny_gguf_f32, 2)
    assert (partial.n_gpu_layers, partial.n_layers) == (2, blocks + 1)
    assert partial.n_layers == plan.n_layers  # the badge's N is the status bar's N
    assert layers_on_gpu(partial.n_gpu_layers, partial.n_layers) == "GPU 2/3 layers"
    assert offload_label(partial.n_gpu_layers, partial.n_layers) == "partial: 2/3 layers"

    # Asking for more layers than exist reports every layer, never more than N.
    everything = _load(tiny_gguf_f32, 999)
    assert (everything.n_gpu_layers, everything.n_layers) == (3, 3)
    assert layers_on_gpu(everything.n_gpu_layers, everything.n_layers) == "GPU 3/3 layers"

    # Auto: the planner's choice for a roomy card is every layer, the badge says it fits.
    auto = _load(tiny_gguf_f32, None)
    assert auto.n_gpu_layers == plan.n_gpu_layers == 3 and plan.label == "fits on GPU"


def test_a_cpu_load_reads_cpu_only(tiny_gguf_f32: Path) -> None:
    report = _load(tiny_gguf_f32, None)
    if report.gpu_offload_supported:
        pytest.skip("this llama.cpp build offloads to a GPU; the CPU wording needs the CPU build")
    assert report.n_gpu_layers == 0 and report.n_layers == 3
    assert layers_on_gpu(report.n_gpu_layers, report.n_layers) == "CPU only"


def test_the_self_test_names_layers_the_same_way(tiny_gguf_f32: Path, cuda_build) -> None:
    from fathom_desktop.selftest import SelfTestReport

    def summary(load) -> str:  # noqa: ANN001
        return SelfTestReport(
            model=tiny_gguf_f32, load=load, backend="CUDA", boxed="42", reasoning_tokens=10,
            answer_tokens=5, decode_tokens_per_s=100.0, qt="6.11", seconds=1.0,
        ).summary()  # fmt: skip

    assert "(F32, CUDA backend, GPU 2/3 layers)" in summary(_load(tiny_gguf_f32, 2))
    assert "(F32, CUDA backend, CPU only)" in summary(_load(tiny_gguf_f32, 0))
