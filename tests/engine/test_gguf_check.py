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


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"block_count": 1_000_000}, "'qwen2.block_count' is 1,000,000, beyond any real model"),
        ({"context_length": 2**31}, "'qwen2.context_length' is 2,147,483,648, beyond any"),
        ({"attention.head_count": 5000}, "'qwen2.attention.head_count' is 5,000, beyond any"),
        ({"embedding_length": 2**30}, "'qwen2.embedding_length' is 1,073,741,824, beyond any"),
        ({"block_count": 3}, "its block count is 3, but its tensors hold 2 blocks"),
        ({"block_count": 1}, "its block count is 1, but its tensors hold 2 blocks"),
        ({"attention.head_count_kv": 3}, "2 attention heads cannot share 3 KV heads"),
        ({"attention.head_count": 4, "attention.head_count_kv": 3}, "cannot share 3 KV heads"),
        ({"embedding_length": 48}, "token_embd.weight has shape [32, 16], expected [48, 16]"),
        ({"attention.head_count": 4}, "tensor blk.0.attn_k.weight has shape"),
        ({"context_length": 0}, "lacks a valid 'qwen2.context_length' setting"),
    ],
    ids=[
        "blocks-1e6", "context-2^31", "heads", "width", "more-blocks", "fewer-blocks",
        "kv-heads-above", "kv-heads-no-multiple", "width-vs-tensors", "heads-vs-tensors",
        "zero-context",
    ],
)  # fmt: skip
def test_metadata_against_itself_and_the_tensors(tmp_path: Path, claims: dict, expected: str):
    path = small_qwen2(tmp_path / "claims.gguf", claims=claims)
    assert expected in reason(path)


def test_oversized_chat_template_is_refused(tmp_path: Path):
    template = "{# padding #}" * 30_000 + "{{ messages }}"
    assert "chat template is 390,014 characters" in reason(
        small_qwen2(tmp_path / "long.gguf", chat_template=template)
    )


@pytest.mark.parametrize(
    "claims", [{"context_length": 2**31}, {"block_count": 1_000_000}], ids=["context", "blocks"]
)
def test_fathom_chat_refuses_absurd_metadata_in_one_line(tmp_path: Path, claims: dict):
    from tests.engine.test_chat_cli import fathom_chat, one_line_error

    path = small_qwen2(tmp_path / "absurd.gguf", claims=claims)
    line = one_line_error(fathom_chat("--model", str(path), "--prompt", "hi"))
    assert line.startswith("fathom-chat: absurd.gguf is damaged: its 'qwen2.")
    assert "beyond any real model" in line
