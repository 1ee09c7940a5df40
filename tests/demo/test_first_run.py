"""First run: the shipped checkpoint becomes a Q8_0 GGUF once, and bad checkpoints fail cleanly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from convert.errors import ConversionError
from convert.inspect import ChatTemplateVariant, inspect_gguf
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
    # Nothing but the one model is left in the folder: no intermediate BF16, no scratch.
    assert sorted(p.name for p in demo_gguf.parent.iterdir()) == [demo_gguf.name]


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
