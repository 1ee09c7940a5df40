"""How the tokenizer files become GGUF vocabulary metadata, without the `tokenizers` library."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from convert.errors import ConversionError
from convert.vocab import PreTokenizer, identify_pre_tokenizer, load_vocab
from tests.synthetic import DEMO_VOCAB_SIZE, TOKENIZER_DIR, demo_tokenizer

T = gguf.TokenType


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A tokenizer folder: the demo BPE with the fixture's current tokenizer_config.json."""
    (tmp_path / "tokenizer.json").write_text(json.dumps(demo_tokenizer(), ensure_ascii=False))
    (tmp_path / "tokenizer_config.json").write_text(
        (TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return tmp_path


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_demo_tokenizer_is_accepted_as_r1(demo_dir: Path) -> None:
    vocab = load_vocab(demo_dir, DEMO_VOCAB_SIZE, {})
    demo = demo_tokenizer()
    n_base = len(demo["model"]["vocab"])
    assert vocab.pre is PreTokenizer.DEEPSEEK_R1_QWEN
    assert len(vocab.tokens) == DEMO_VOCAB_SIZE
    assert vocab.token_types[:n_base] == [T.NORMAL] * n_base
    specials = dict(
        zip(vocab.tokens[n_base : n_base + 7], vocab.token_types[n_base:], strict=False)
    )
    assert specials == {
        "<｜end▁of▁sentence｜>": T.CONTROL,
        "<｜User｜>": T.CONTROL,
        "<｜Assistant｜>": T.CONTROL,
        "<｜begin▁of▁sentence｜>": T.CONTROL,
        "<|EOT|>": T.CONTROL,
        "<think>": T.USER_DEFINED,
        "</think>": T.USER_DEFINED,
    }
    assert vocab.tokens[n_base + 7 :] == [f"[PAD{i}]" for i in range(n_base + 7, DEMO_VOCAB_SIZE)]
    assert set(vocab.token_types[n_base + 7 :]) == {T.UNUSED}
    # Pair-spelled merges become llama.cpp's "left right" strings.
    assert vocab.merges == [" ".join(pair) for pair in demo["model"]["merges"]]
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id) == (n_base + 3, n_base, n_base)
    assert (vocab.add_bos, vocab.add_eos) == (True, False)


def test_merge_parts_with_spaces_use_the_byte_level_stand_in(demo_dir: Path) -> None:
    edit(demo_dir / "tokenizer.json", lambda t: t["model"]["merges"].insert(0, ["a b", "c"]))
    assert load_vocab(demo_dir, DEMO_VOCAB_SIZE, {}).merges[0] == "a\u0120b c"


def test_qwen2_tokenizer_is_told_apart(demo_dir: Path) -> None:
    renames = {"<｜end▁of▁sentence｜>": "<|endoftext|>", "<｜User｜>": "<|im_start|>"}

    def as_qwen2(t: dict) -> None:
        for added in t["added_tokens"]:
            added["content"] = renames.get(added["content"], added["content"])

    edit(demo_dir / "tokenizer.json", as_qwen2)
    # Qwen2's own tokenizer_config has no BOS; config.json's ids are the fallback.
    edit(
        demo_dir / "tokenizer_config.json",
        lambda c: c.update(bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
    )
    vocab = load_vocab(demo_dir, DEMO_VOCAB_SIZE, {"bos_token_id": 393, "eos_token_id": [393, 394]})
    assert vocab.pre is PreTokenizer.QWEN2
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id) == (393, 393, 393)


def test_special_ids_fall_back_to_config_json(demo_dir: Path) -> None:
    edit(
        demo_dir / "tokenizer_config.json",
        lambda c: [c.pop(k) for k in ("bos_token", "eos_token", "pad_token", "add_bos_token")],
    )
    vocab = load_vocab(demo_dir, DEMO_VOCAB_SIZE, {"bos_token_id": 396, "eos_token_id": 393})
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id) == (396, 393, None)
    # Without add_bos_token, the post-processor's template says BOS is added.
    assert vocab.add_bos is True and vocab.add_eos is False


def test_bos_naming_an_unknown_token(demo_dir: Path) -> None:
    edit(demo_dir / "tokenizer_config.json", lambda c: c.update(bos_token="<s>"))
    with pytest.raises(ConversionError, match="names '<s>' as the BOS token, but the tokenizer"):
        load_vocab(demo_dir, DEMO_VOCAB_SIZE, {})


def test_chat_template_sources(demo_dir: Path) -> None:
    expected = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert load_vocab(demo_dir, DEMO_VOCAB_SIZE, {}).chat_template == expected["chat_template"]

    # A chat_template.jinja file wins, as in transformers.
    (demo_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    assert load_vocab(demo_dir, DEMO_VOCAB_SIZE, {}).chat_template == "{{ messages[0]['content'] }}"

    (demo_dir / "chat_template.jinja").unlink()
    named = [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]
    edit(demo_dir / "tokenizer_config.json", lambda c: c.update(chat_template=named))
    assert load_vocab(demo_dir, DEMO_VOCAB_SIZE, {}).chat_template == named

    edit(demo_dir / "tokenizer_config.json", lambda c: c.pop("chat_template"))
    assert load_vocab(demo_dir, DEMO_VOCAB_SIZE, {}).chat_template is None


def test_fixture_tokenizer_fingerprint() -> None:
    tokenizer = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    assert identify_pre_tokenizer(tokenizer) is PreTokenizer.DEEPSEEK_R1_QWEN
    tokenizer["normalizer"] = {"type": "NFKC"}
    with pytest.raises(ConversionError, match="normalizer 'NFKC' is not Qwen2's"):
        identify_pre_tokenizer(tokenizer)
