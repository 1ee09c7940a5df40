"""`inspect`: what a GGUF holds, and the two things Fathom Desktop depends on in it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.errors import ConversionError
from convert.gguf_header import read_gguf_header
from convert.inspect import ChatTemplateVariant, format_info, inspect_gguf, template_variant
from tests.convert.test_quantize import write_ladder_model


def _template(fixture_dir: Path, name: str) -> str:
    config = fixture_dir / "r1-distill-qwen-tokenizer" / name
    return json.loads(config.read_text(encoding="utf-8"))["chat_template"]


def test_a_converted_fathom_style_model(tiny_gguf_bf16: Path) -> None:
    info = inspect_gguf(tiny_gguf_bf16)
    assert info.architecture == "qwen2"
    assert info.file_type == "BF16"
    assert (info.n_layers, info.context_length, info.embedding_length) == (2, 4096, 64)
    assert (info.n_heads, info.n_kv_heads) == (4, 2)
    assert info.vocab_size == 152064
    assert info.pre_tokenizer == "deepseek-r1-qwen"
    assert info.bos is not None and (info.bos.id, info.bos.text) == (
        151646,
        "<｜begin▁of▁sentence｜>",
    )
    assert info.eos is not None and (info.eos.id, info.eos.text) == (
        151643,
        "<｜end▁of▁sentence｜>",
    )
    think, unthink = info.reasoning_tokens["<think>"], info.reasoning_tokens["</think>"]
    assert think is not None and (think.id, think.type) == (151648, "USER_DEFINED")
    assert unthink is not None and (unthink.id, unthink.type) == (151649, "USER_DEFINED")
    assert info.reasoning_tags_ok
    assert info.chat_template is ChatTemplateVariant.OPENS_THINK
    assert info.tensor_types == {"BF16": 16, "F32": 11}
    assert info.n_tensors == 27
    assert info.size_bytes == tiny_gguf_bf16.stat().st_size
    assert info.problems == []


def test_the_legacy_template_is_told_apart(tiny_gguf_legacy: Path) -> None:
    info = inspect_gguf(tiny_gguf_legacy)
    assert info.chat_template is ChatTemplateVariant.MODEL_OPENS_THINK
    assert "model writes <think> itself" in format_info(info)


def test_json_form_carries_every_field(tiny_gguf_bf16: Path) -> None:
    data = json.loads(json.dumps(inspect_gguf(tiny_gguf_bf16).to_json()))
    assert data["chat_template"] == "opens-think"
    assert data["reasoning_tags_ok"] is True
    assert data["reasoning_tokens"]["</think>"] == {
        "id": 151649,
        "text": "</think>",
        "type": "USER_DEFINED",
    }
    assert data["tensor_types"]["BF16"] == 16
    assert data["n_params"] > 0


def test_reasoning_tags_that_are_not_user_defined_are_flagged(tmp_path: Path) -> None:
    path = write_ladder_model(tmp_path / "normal-think.gguf", think_type=gguf.TokenType.NORMAL)
    info = inspect_gguf(path)
    assert not info.reasoning_tags_ok
    assert any("reasoning tags would vanish" in p for p in info.problems)
    text = format_info(info)
    assert "WARNING: <think>" in text and "is NORMAL, not USER_DEFINED" in text


def test_a_model_without_chat_template_is_flagged(tmp_path: Path) -> None:
    info = inspect_gguf(write_ladder_model(tmp_path / "plain.gguf"))
    assert info.chat_template is ChatTemplateVariant.ABSENT
    assert any("no chat template" in p for p in info.problems)
    assert info.reasoning_tags_ok  # the tags themselves are fine


def test_template_variants_of_the_real_r1_templates(fixture_dir: Path) -> None:
    current = _template(fixture_dir, "tokenizer_config.json")
    legacy = _template(fixture_dir, "tokenizer_config.legacy-template.json")
    assert template_variant(current, "<｜begin▁of▁sentence｜>") is ChatTemplateVariant.OPENS_THINK
    assert template_variant(legacy) is ChatTemplateVariant.MODEL_OPENS_THINK
    assert template_variant(None) is ChatTemplateVariant.ABSENT
    assert template_variant("{% if %}") is ChatTemplateVariant.UNRECOGNIZED
    assert template_variant("{{ raise_exception('no') }}") is ChatTemplateVariant.UNRECOGNIZED


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "too short"),
        (b"PK\x03\x04 a zip file, not a model" * 4, "GGUF magic number"),
        (b"GGUF\x09\x00\x00\x00" + b"\x00" * 40, "version 9"),
    ],
)
def test_bad_files_give_one_readable_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ConversionError) as err:
        inspect_gguf(path)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        inspect_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ConversionError, match="not a file"):
        inspect_gguf(tmp_path)


def test_damaged_files_never_escape_as_anything_but_a_conversion_error(tmp_path: Path) -> None:
    """Every cut point and a spray of flipped bytes: a clean refusal, never a crash."""
    good = write_ladder_model(tmp_path / "good.gguf", n_layers=1).read_bytes()
    header_end = read_gguf_header(tmp_path / "good.gguf").data_offset
    damaged = tmp_path / "damaged.gguf"
    rng = np.random.default_rng(1)
    cuts = list(range(0, header_end, max(1, header_end // 60))) + [len(good) - 1]
    for cut in cuts:
        damaged.write_bytes(good[:cut])
        with pytest.raises(ConversionError):
            inspect_gguf(damaged)
    for _ in range(60):
        data = bytearray(good)
        for pos in rng.integers(0, header_end, size=4):
            data[pos] = int(rng.integers(0, 256))
        damaged.write_bytes(bytes(data))
        with contextlib.suppress(ConversionError):  # some flips land in harmless bytes
            inspect_gguf(damaged)
