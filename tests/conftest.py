"""Suite-wide set-up: headless Qt, the read-only fixtures in tests/fixtures, the tiny models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before any Qt import so that every test, and every process a test starts, runs headless.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# No test may reach the network; huggingface-hub honours these.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# API keys: no test may read or write the user's real keyring (tests that store a key install
# their own in-memory keyring with keyring.set_keyring).
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
# Settings, history and models of anything a test starts go to a throwaway folder, never to the
# user's real data folders; tests that need their own set FATHOM_HOME themselves.
os.environ["FATHOM_HOME"] = tempfile.mkdtemp(prefix="fathom-tests-home-")

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What the tests read (tokenizer, config, llama.cpp vectors), licences in tests/fixtures/README.md.
FIXTURE_DIR = PROJECT_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE_DIR.is_dir():
        pytest.fail(f"test fixtures missing at {FIXTURE_DIR}")
    return FIXTURE_DIR


# --- Tiny models (owned by the converter; every part's tests may use them) -------------------
# A 2-layer, 64-wide Qwen2 with the real R1 tokenizer and Fathom's padded vocabulary (152,064),
# random weights, converted by the real converter. Building all of them takes a few seconds.


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path):
    """The untied BF16 checkpoint (current template), with its weights for reference checks."""
    from tests.synthetic import ChatTemplate, build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", template=ChatTemplate.CURRENT)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_synthetic) -> Path:
    """Folder of an untied BF16 Qwen2ForCausalLM checkpoint whose prompt ends `<think>\\n`."""
    return tiny_synthetic.path


@pytest.fixture(scope="session")
def tiny_checkpoint_legacy(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    """The same model with the legacy template (the model writes `<think>` itself)."""
    from tests.synthetic import ChatTemplate, build_checkpoint

    folder = tmp_path_factory.mktemp("tiny-legacy") / "ckpt"
    return build_checkpoint(folder, template=ChatTemplate.LEGACY).path


def _converted(checkpoint: Path, out_dir: Path, outtype: str) -> Path:
    from convert.gguf_convert import convert_checkpoint

    out = out_dir / f"tiny-{outtype.upper()}.gguf"
    return convert_checkpoint(checkpoint, out, outtype, source_repo="fathom-tests/Tiny-Qwen2").path


@pytest.fixture(scope="session")
def tiny_gguf_f32(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _converted(tiny_checkpoint, tmp_path_factory.mktemp("gguf-f32"), "f32")


@pytest.fixture(scope="session")
def tiny_gguf_bf16(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _converted(tiny_checkpoint, tmp_path_factory.mktemp("gguf-bf16"), "bf16")


@pytest.fixture(scope="session")
def tiny_gguf_legacy(
    tiny_checkpoint_legacy: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """BF16 GGUF of the legacy-template checkpoint."""
    return _converted(tiny_checkpoint_legacy, tmp_path_factory.mktemp("gguf-legacy"), "bf16")
