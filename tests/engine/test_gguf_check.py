"""Model-file checks: every bad file gives one readable reason, never a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fathom_desktop.engine.errors import ModelFileError
from fathom_desktop.engine.gguf_check import check_model_file
from tests.engine.tiny_models import small_qwen2


def reason(path: Path) -> str:
    with pytest.raises(ModelFileError) as raised:
        check_model_file(path)
    message = str(raised.value)
    assert "\n" not in message and path.name in message
    return message


def test_a_good_file_describes_itself(tiny_gguf_f32: Path):
    info = check_model_file(tiny_gguf_f32)
    assert info.arch == "qwen2"
    assert info.file_type == "F32"
    assert info.n_layers == 2
    assert info.n_vocab == 152064
    assert info.size_bytes == tiny_gguf_f32.stat().st_size
    assert info.chat_template.endswith("{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    assert info.n_ctx_train > 0 and info.head_dim * info.n_head == info.n_embd


def test_a_small_model_with_mixed_tensor_types_passes(tmp_path: Path):
    # The reader itself is compared with gguf.GGUFReader in tests/convert/test_gguf_header.py.
    assert check_model_file(small_qwen2(tmp_path / "mixed.gguf")).n_layers == 2


def test_truncated_file_says_it_is_incomplete(tiny_gguf_f32: Path, tmp_path: Path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf_f32.read_bytes()[: tiny_gguf_f32.stat().st_size * 2 // 3])
    assert "incomplete" in reason(cut)


def test_file_cut_inside_the_header(tiny_gguf_f32: Path, tmp_path: Path):
    cut = tmp_path / "header-cut.gguf"
    cut.write_bytes(tiny_gguf_f32.read_bytes()[:100_000])
    assert "damaged or incomplete" in reason(cut)


def test_random_bytes_are_not_a_gguf(tmp_path: Path):
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(os.urandom(64 * 1024))
    assert "not a GGUF" in reason(noise)


def test_empty_file_and_missing_file_and_folder(tmp_path: Path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "not a GGUF" in reason(empty)
    assert "no such model file" in reason(tmp_path / "absent.gguf")
    with pytest.raises(ModelFileError):
        check_model_file(tmp_path)


def test_gguf_magic_with_garbage_counts_is_rejected_quickly(tmp_path: Path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 16 + os.urandom(1000))
    assert "damaged" in reason(bogus)


def test_wrong_architecture_names_both(tmp_path: Path):
    llama_file = small_qwen2(tmp_path / "llama.gguf", architecture="llama")
    message = reason(llama_file)
    assert "'llama'" in message and "'qwen2'" in message


def test_missing_tokenizer(tmp_path: Path):
    bare = small_qwen2(tmp_path / "bare.gguf", tokenizer=False)
    assert "tokenizer" in reason(bare)


def test_missing_chat_template(tmp_path: Path):
    assert "chat template" in reason(small_qwen2(tmp_path / "plain.gguf", chat_template=False))


def test_missing_tensor_is_named(tmp_path: Path):
    path = small_qwen2(tmp_path / "partial.gguf", drop="blk.1.ffn_up.weight")
    assert "blk.1.ffn_up.weight" in reason(path)
