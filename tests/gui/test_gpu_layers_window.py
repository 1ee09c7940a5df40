"""The status bar and the welcome view count GPU layers as the real engine's load report does."""

from __future__ import annotations

from pathlib import Path

import pytest

from fathom_desktop.engine import LlamaEngine, gpu_support, llama_backend, llama_engine
from fathom_desktop.engine.gpu_support import CudaBuild
from fathom_desktop.engine.planner import GpuInfo, plan_offload
from tests.gui.conftest import cuda_backend


@pytest.fixture
def cuda_build(monkeypatch: pytest.MonkeyPatch) -> GpuInfo:
    """A CUDA build on a usable GPU (this machine's CPU llama.cpp loads it all on the CPU)."""
    gpu = GpuInfo("Fake RTX 4090", 24 * 2**30, 23 * 2**30, (8, 9), 13000)
    monkeypatch.setattr(llama_backend, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(gpu_support, "current_build", lambda: CudaBuild((890,), 13000))
    monkeypatch.setattr(llama_engine, "detect_gpu", lambda: gpu)
    cuda_backend(monkeypatch)
    return gpu


def test_status_bar_shows_the_real_engines_layers_with_the_planners_n(
    make_window, cuda_build: GpuInfo, tiny_gguf_f32: Path
) -> None:
    window = make_window(
        engine=LlamaEngine(),
        settings={"model_path": str(tiny_gguf_f32), "n_ctx": 512, "n_gpu_layers": 2},
    )
    assert window.session.report.n_layers == 3  # two blocks and the output layer
    assert window.gpu_label.text() == "GPU 2/3 layers"  # not 2/4: N is counted once
    assert "GPU 2/3 layers" in window.chat.welcome.model_label.text()
    # The settings dialog's fit badge for the same file uses the same N.
    plan = plan_offload(tiny_gguf_f32, n_ctx=512, free_vram_bytes=1)
    assert plan.n_layers == window.session.report.n_layers
