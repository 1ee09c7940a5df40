"""Engine test fixtures: the converter's tiny GGUFs, plus a few models the converter cannot make."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.tiny_models import TinyShape, write_tiny_qwen2

SMALL_CTX = 512  # a full 16k context would allocate far more than these tests need


@pytest.fixture(scope="session")
def wide_head_gguf(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    """A tiny Qwen2 whose head size (32) suits a q8_0/q4_0 KV cache (blocks of 32)."""
    shape = TinyShape(n_embd=64, n_ff=128, n_layers=2, n_head=2, n_head_kv=1)
    return write_tiny_qwen2(tmp_path_factory.mktemp("wide") / "wide-head.gguf", shape=shape)


@pytest.fixture(scope="module")
def engine(tiny_gguf_f32: Path) -> Iterator[object]:
    """One loaded engine per test module (loading takes about half a second)."""
    from fathom_desktop.engine import LlamaEngine
    from fathom_desktop.engine.types import LoadOptions

    engine = LlamaEngine()
    engine.load(LoadOptions(tiny_gguf_f32, n_ctx=SMALL_CTX))
    yield engine
    engine.close()
