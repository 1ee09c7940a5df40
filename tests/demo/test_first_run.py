"""First run: the shipped checkpoint becomes a Q8_0 GGUF (and its BF16 reference) once, and bad
checkpoints fail cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convert.errors import ConversionError
from convert.inspect import ChatTemplateVariant, inspect_gguf
from convert.manifest import read_manifest, sha256_file
from fathom_desktop.demo import demo_checkpoint, demo_model_path, ensure_demo_model


def test_first_run_makes_a_q8_0_gguf_with_r1_tokens(demo_gguf: Path) -> None:
    info = inspect_gguf(demo_gguf)
    assert info.architecture == "qwen2"
    assert info.file_type == "Q8_0"
    assert info.pre_tokenizer == "deepseek-r1-qwen"
    assert info.reasoning_tags_ok  # <think>/</think> are USER_DEFINED, so they show as text
    assert info.chat_template is ChatTemplateVariant.OPENS_THINK
    assert demo_gguf.name.endswith("-Q8_0.gguf")


def test_later_runs_reuse_the_gguf(demo_gguf: Path) -> None:
    before = demo_gguf.stat().st_mtime_ns
    again = ensure_demo_model(directory=demo_gguf.parent)
    assert again == demo_gguf
    assert again.stat().st_mtime_ns == before
    # The model, its BF16 reference (the rest of its ladder is made from it) and the manifest
    # that lists both; no scratch.
    reference = demo_model_path(directory=demo_gguf.parent, quant="BF16")
    assert sorted(p.name for p in demo_gguf.parent.iterdir()) == sorted(
        [demo_gguf.name, reference.name, "manifest.json"]
    )
    files = read_manifest(demo_gguf.parent).files
    assert files[reference.name].quant_type == "BF16"
    assert files[demo_gguf.name].sha256 == sha256_file(demo_gguf)


def test_files_of_an_older_demo_are_removed(tmp_path: Path) -> None:
    (tmp_path / "fathom-tiny-000000000000-Q4_K_M.gguf").write_bytes(b"GGUF")
    (tmp_path / "fathom-tiny-000000000000-imatrix.gguf").write_bytes(b"GGUF")
    (tmp_path / "Fathom-R1-14B-Q4_K_M.gguf").write_bytes(b"GGUF")  # not the demo's
    model = ensure_demo_model(directory=tmp_path)
    reference = demo_model_path(directory=tmp_path, quant="BF16")
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == sorted(
        [model.name, reference.name, "Fathom-R1-14B-Q4_K_M.gguf"]
    )


def test_a_changed_checkpoint_gets_a_new_file(tmp_path: Path) -> None:
    folder = tmp_path / "fathom-tiny"
    shutil.copytree(demo_checkpoint(), folder)
    before = demo_model_path(folder, tmp_path)
    config = folder / "generation_config.json"
    config.write_text(config.read_text().replace("0.95", "0.9"))
    assert demo_model_path(folder, tmp_path) != before


def test_missing_weights_are_one_readable_line_and_leave_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(demo_checkpoint(), folder)
    (folder / "model.safetensors").unlink()
    out = tmp_path / "models"
    out.mkdir()
    with pytest.raises(ConversionError) as raised:
        ensure_demo_model(checkpoint=folder, directory=out)
    assert "\n" not in str(raised.value) and "model.safetensors" in str(raised.value)
    assert list(out.iterdir()) == []


def test_truncated_weights_fail_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "truncated"
    shutil.copytree(demo_checkpoint(), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "models"
    out.mkdir()
    with pytest.raises(ConversionError) as raised:
        ensure_demo_model(checkpoint=folder, directory=out)
    assert "\n" not in str(raised.value)
    assert list(out.iterdir()) == []


def test_a_killed_first_run_leaves_no_scratch_behind(tmp_path: Path) -> None:
    """A first run killed mid-conversion leaves its scratch folder; the next start removes it."""
    out = tmp_path / "models"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from fathom_desktop.demo import ensure_demo_model;"
         "ensure_demo_model(directory=Path(sys.argv[1]))", str(out)],
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 60
    while not list(out.glob(".fathom-tiny-*")):
        assert child.poll() is None and time.monotonic() < deadline, "no scratch folder appeared"
        time.sleep(0.005)
    child.kill()
    child.wait()
    abandoned = list(out.glob(".fathom-tiny-*"))
    assert abandoned  # what a killed run leaves
    # One from an older release (no PID in the name) and one of a run still going (ours).
    (out / ".fathom-tiny-k2j4x9").mkdir()
    live = out / f".fathom-tiny-{os.getpid()}-a1b2c3"
    live.mkdir()

    model = ensure_demo_model(directory=out)

    reference = demo_model_path(directory=out, quant="BF16")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [model.name, reference.name, "manifest.json", live.name]
    )
