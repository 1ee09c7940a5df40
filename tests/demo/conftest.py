"""Demo-model fixtures: the shipped fathom-tiny converted once per session, both chat templates."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

DEMO_N_CTX = 1024  # one problem and its worked reply need under ~450 tokens


@pytest.fixture(scope="session")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped checkpoint through the app's first-run path: converter, then Q8_0."""
    from fathom_desktop.demo import ensure_demo_model

    return ensure_demo_model(directory=tmp_path_factory.mktemp("demo-models"))


@pytest.fixture(scope="session")
def demo_gguf_legacy(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    """The same weights with R1's legacy template, as some real checkpoints ship."""
    from fathom_desktop.demo import demo_checkpoint, ensure_demo_model

    folder = tmp_path_factory.mktemp("legacy") / "fathom-tiny"
    shutil.copytree(demo_checkpoint(), folder)
    legacy = fixture_dir / "r1-distill-qwen-tokenizer" / "tokenizer_config.legacy-template.json"
    shutil.copyfile(legacy, folder / "tokenizer_config.json")
    return ensure_demo_model(checkpoint=folder, directory=tmp_path_factory.mktemp("legacy-models"))


@pytest.fixture(scope="module")
def demo_engine(demo_gguf: Path) -> Iterator[object]:
    from fathom_desktop.engine import LlamaEngine
    from fathom_desktop.engine.types import LoadOptions

    engine = LlamaEngine()
    engine.load(LoadOptions(demo_gguf, n_ctx=DEMO_N_CTX, n_gpu_layers=0, n_threads=2))
    yield engine
    engine.close()
