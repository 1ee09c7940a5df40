"""The shipped fathom-tiny checkpoint: Fathom's architecture, R1's tokenizer, within budget."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from fathom_desktop.demo import CHECKPOINT_FILES, demo_checkpoint

SIZE_BUDGET = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return demo_checkpoint()


def _tensor_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def test_checkpoint_fits_the_size_budget(checkpoint: Path) -> None:
    total = sum((checkpoint / name).stat().st_size for name in CHECKPOINT_FILES)
    assert total <= SIZE_BUDGET, f"{total:,} bytes"


def test_architecture_is_fathoms_qwen2(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query
    header = _tensor_header(checkpoint / "model.safetensors")
    layer0 = "model.layers.0.self_attn"
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert f"{layer0}.{proj}.bias" in header
    assert f"{layer0}.o_proj.bias" not in header
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert f"model.layers.0.mlp.{name}.weight" in header
    assert "lm_head.weight" in header and "model.norm.weight" in header
    assert {info["dtype"] for k, info in header.items() if k != "__metadata__"} == {"BF16"}


def test_chat_template_is_r1s_current_one(checkpoint: Path, fixture_dir: Path) -> None:
    ours = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    r1 = json.loads(
        (fixture_dir / "r1-distill-qwen-tokenizer" / "tokenizer_config.json").read_text(
            encoding="utf-8"
        )
    )
    assert ours["chat_template"] == r1["chat_template"]
    assert ours["chat_template"].endswith("{{'<｜Assistant｜><think>\\n'}}{% endif %}")


def test_tokenizer_keeps_r1_tokens_and_single_digits(checkpoint: Path) -> None:
    tok = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    prompt = "<｜begin▁of▁sentence｜><｜User｜>What is 1234 + 5?<｜Assistant｜><think>\nok</think>"
    tokens = tok.encode(prompt, add_special_tokens=False).tokens
    for special in (
        "<｜begin▁of▁sentence｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<think>",
        "</think>",
    ):
        assert tokens.count(special) == 1, special
    assert [t for t in tokens if t.isdigit()] == ["1", "2", "3", "4", "5"]
    # <think> and </think> are added but not special: they survive detokenization as text.
    ids = tok.encode("<think>\nx</think>", add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=True) == "<think>\nx</think>"
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    assert {"<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"} <= specials
    assert "<think>" not in specials and "</think>" not in specials
