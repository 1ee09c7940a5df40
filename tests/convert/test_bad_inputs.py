"""Every way a checkpoint can be wrong gives one readable line, and no file is left behind."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import convert.atomic
from convert.errors import ConversionError
from convert.gguf_convert import convert_checkpoint
from tests.synthetic import (
    DEMO_VOCAB_SIZE,
    Qwen2Shape,
    SyntheticCheckpoint,
    TokenizerKind,
    build_checkpoint,
    encode,
    shard_name,
    write_safetensors,
    write_shards,
)

# Narrow, with the small demo tokenizer: each checkpoint builds and converts in milliseconds.
SMALL = Qwen2Shape(
    n_layers=2,
    hidden_size=8,
    intermediate_size=16,
    n_heads=2,
    n_kv_heads=1,
    vocab_size=DEMO_VOCAB_SIZE,
)


def small_checkpoint(folder: Path, **kwargs) -> SyntheticCheckpoint:
    return build_checkpoint(folder / "ckpt", shape=SMALL, tokenizer=TokenizerKind.DEMO, **kwargs)


def rewrite_weights(ckpt: SyntheticCheckpoint, change: Callable[[dict], None]) -> None:
    """Rewrite the (unsharded) checkpoint after `change` edits {name: (dtype, stored array)}."""
    tensors = {n: (ckpt.dtype, encode(w, ckpt.dtype)) for n, w in ckpt.weights.items()}
    change(tensors)
    write_safetensors(ckpt.path / "model.safetensors", tensors)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def refuse(ckpt_dir: Path, out_dir: Path, outtype: str = "bf16") -> str:
    out = out_dir / "model.gguf"
    with pytest.raises(ConversionError) as caught:
        convert_checkpoint(ckpt_dir, out, outtype)
    assert list(out_dir.iterdir()) == [], "a failed conversion left files behind"
    message = str(caught.value)
    assert "\n" not in message and message.endswith((".", "?"))
    return message


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_missing_shard(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path, shards=3)
    (ckpt.path / shard_name(2, 3)).unlink()
    message = refuse(ckpt.path, out_dir)
    assert message.startswith(
        f"Missing shard {shard_name(2, 3)} (listed in model.safetensors.index"
    )


def test_extra_shard(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path, shards=2)
    shutil.copy(ckpt.path / shard_name(1, 2), ckpt.path / shard_name(3, 3))
    message = refuse(ckpt.path, out_dir)
    assert message.startswith(
        f"Extra shard {shard_name(3, 3)} not listed in model.safetensors.index"
    )


def test_index_that_skips_a_shard(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path, shards=3)
    # A broken upload: shard 2 and every mention of it are gone.
    (ckpt.path / shard_name(2, 3)).unlink()
    edit_json(
        ckpt.path / "model.safetensors.index.json",
        lambda index: index.update(
            weight_map={k: v for k, v in index["weight_map"].items() if v != shard_name(2, 3)}
        ),
    )
    assert "skip part of the numbering; a shard is missing" in refuse(ckpt.path, out_dir)


def test_shard_disagreeing_with_the_index(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path, shards=2)
    edit_json(
        ckpt.path / "model.safetensors.index.json",
        lambda index: index["weight_map"].update({"model.norm.weight": shard_name(1, 2)}),
    )
    # Tensors are dealt round-robin, so model.norm.weight really sits in shard 2.
    message = refuse(ckpt.path, out_dir)
    assert (
        f"'model.norm.weight' is in {shard_name(2, 2)}, but model.safetensors.index.json" in message
    )


def test_sharded_weights_without_index(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path, shards=2)
    (ckpt.path / "model.safetensors.index.json").unlink()
    assert "holds sharded weights" in refuse(ckpt.path, out_dir)


def test_shape_disagreeing_with_config(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    edit_json(ckpt.path / "config.json", lambda c: c.update(intermediate_size=32))
    message = refuse(ckpt.path, out_dir)
    assert message == (
        "Tensor 'model.layers.0.mlp.gate_proj.weight' in model.safetensors has shape [16, 8], "
        "but config.json implies [32, 8]."
    )


def test_missing_tensor(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    rewrite_weights(ckpt, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    message = refuse(ckpt.path, out_dir)
    assert message == "The checkpoint is missing 1 tensor: model.layers.1.self_attn.k_proj.bias."


def test_missing_lm_head_in_an_untied_model(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    rewrite_weights(ckpt, lambda t: t.pop("lm_head.weight"))
    assert "missing 1 tensor: lm_head.weight" in refuse(ckpt.path, out_dir)


def test_tensor_of_another_model(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    extra = ("BF16", encode(np.ones((16, 8), np.float32), "BF16"))
    rewrite_weights(ckpt, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": extra}))
    message = refuse(ckpt.path, out_dir)
    assert message.startswith(
        "Unexpected tensor for a 2-layer Qwen2ForCausalLM: model.layers.2.mlp.up_proj.weight"
    )


def test_truncated_safetensors(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    path = ckpt.path / "model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    message = refuse(ckpt.path, out_dir)
    assert message.startswith("model.safetensors: tensor 'lm_head.weight' has data offsets")
    assert "the file is truncated or corrupt" in message


def test_corrupt_safetensors_header(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path, shards=2)
    path = ckpt.path / shard_name(2, 2)
    data = bytearray(path.read_bytes())
    data[8:12] = b"\x00{[}"
    path.write_bytes(bytes(data))
    message = refuse(ckpt.path, out_dir)
    assert message.startswith(f"{shard_name(2, 2)} has a corrupt header: it is not valid JSON")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
            "Unsupported architecture in config.json: LlamaForCausalLM; only Qwen2ForCausalLM",
        ),
        ({"architectures": []}, "Unsupported architecture in config.json: qwen2;"),
        (
            {"num_key_value_heads": 3},
            "num_attention_heads 2 is not a multiple of num_key_value_heads 3",
        ),
        ({"hidden_size": "8"}, "config.json: hidden_size must be a positive integer, got '8'."),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "uses RoPE scaling 'yarn'"),
        ({"use_sliding_window": True}, "config.json enables use_sliding_window"),
    ],
    ids=["llama", "no-architecture", "heads", "type", "rope-scaling", "sliding-window"],
)
def test_config_the_converter_cannot_honour(
    tmp_path: Path, out_dir: Path, change, expected
) -> None:
    ckpt = small_checkpoint(tmp_path)
    edit_json(ckpt.path / "config.json", lambda c: c.update(change))
    assert expected in refuse(ckpt.path, out_dir)


def test_tokenizer_larger_than_the_model(tmp_path: Path, out_dir: Path) -> None:
    ckpt = build_checkpoint(
        tmp_path / "ckpt", shape=replace(SMALL, vocab_size=300), tokenizer=TokenizerKind.DEMO
    )
    message = refuse(ckpt.path, out_dir)
    assert message.startswith("The tokenizer has token id 399, but config.json's vocab_size is 300")


def test_not_a_checkpoint(tmp_path: Path, out_dir: Path) -> None:
    assert "does not exist" in refuse(tmp_path / "nowhere", out_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json" in refuse(empty, out_dir)
    ckpt = small_checkpoint(tmp_path)
    (ckpt.path / "model.safetensors").rename(ckpt.path / "pytorch_model.bin")
    message = refuse(ckpt.path, out_dir)
    assert "No safetensors weights in" in message and "pytorch_model.bin" in message


def _set_tokenizer(ckpt: SyntheticCheckpoint, change: Callable[[dict], None]) -> None:
    edit_json(ckpt.path / "tokenizer.json", change)


def test_tokenizer_with_another_pre_tokenizer(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    _set_tokenizer(ckpt, lambda t: t.update(pre_tokenizer=gpt2))
    message = refuse(ckpt.path, out_dir)
    assert message.startswith("Unknown tokenizer: its pre-tokenizer is ByteLevel, not Qwen2's")


def test_tokenizer_with_a_different_split_regex(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)

    def digits_in_threes(t: dict) -> None:
        split = t["pre_tokenizer"]["pretokenizers"][0]["pattern"]
        split["Regex"] = split["Regex"].replace(r"\p{N}|", r"\p{N}{1,3}|")

    _set_tokenizer(ckpt, digits_in_threes)
    assert "pre-tokenizer is Split(" in refuse(ckpt.path, out_dir)


def test_tokenizer_without_known_special_tokens(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)

    def rename_user(t: dict) -> None:
        for added in t["added_tokens"]:
            if added["content"] == "<｜User｜>":
                added["content"] = "<|user|>"

    _set_tokenizer(ckpt, rename_user)
    assert refuse(ckpt.path, out_dir) == (
        "Unknown tokenizer: Qwen2's pre-tokenizer, but its special tokens are neither "
        "DeepSeek-R1's (has <｜begin▁of▁sentence｜>, <｜Assistant｜>; lacks <｜User｜>) "
        "nor Qwen2's (lacks <|endoftext|>, <|im_start|>)."
    )


def test_unigram_tokenizer(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    _set_tokenizer(ckpt, lambda t: t["model"].update(type="Unigram"))
    assert refuse(ckpt.path, out_dir).startswith("Unknown tokenizer: model type 'Unigram'")


def test_missing_tokenizer(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    (ckpt.path / "tokenizer.json").unlink()
    assert "has no tokenizer.json" in refuse(ckpt.path, out_dir)


@pytest.mark.parametrize(("dtype", "bad"), [("BF16", np.nan), ("F16", -np.inf), ("F32", np.inf)])
def test_nan_or_inf_names_the_tensor(tmp_path: Path, out_dir: Path, dtype: str, bad: float) -> None:
    ckpt = small_checkpoint(tmp_path, dtype=dtype)
    values = ckpt.weights["model.layers.1.mlp.down_proj.weight"].copy()
    values[3, 5] = bad
    # Late in the file, so the failure comes after most of the GGUF has been written.
    rewrite_weights(
        ckpt,
        lambda t: t.update({"model.layers.1.mlp.down_proj.weight": (dtype, encode(values, dtype))}),
    )
    message = refuse(ckpt.path, out_dir, outtype="f16")
    assert message == (
        "Tensor 'model.layers.1.mlp.down_proj.weight' in model.safetensors contains NaN or Inf "
        "values; the checkpoint is corrupt."
    )


def test_values_beyond_f16_range(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path, dtype="F32")
    values = ckpt.weights["model.layers.0.self_attn.o_proj.weight"].copy()
    values[0, 0] = 1e6
    rewrite_weights(
        ckpt,
        lambda t: t.update({"model.layers.0.self_attn.o_proj.weight": ("F32", values)}),
    )
    message = refuse(ckpt.path, out_dir, outtype="f16")
    assert "'model.layers.0.self_attn.o_proj.weight' has values too large for F16" in message
    # The same weights are fine where they fit.
    convert_checkpoint(ckpt.path, out_dir / "ok.gguf", "bf16")


def test_no_disk_space(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = small_checkpoint(tmp_path)
    real = shutil.disk_usage

    def nearly_full(path):
        return real(path)._replace(free=10 << 20)

    monkeypatch.setattr(convert.atomic.shutil, "disk_usage", nearly_full)
    message = refuse(ckpt.path, out_dir)
    assert message.startswith("Not enough disk space for model.gguf: needs ")
    # A small model's figures are in units that show them, never "0.00 GB".
    assert "0.00 GB" not in message
    assert "10.49 MB free" in message


def test_unknown_outtype(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    assert (
        refuse(ckpt.path, out_dir, outtype="q4_0")
        == "Unknown output type 'q4_0'; choose one of f32, f16, bf16."
    )


def test_a_failure_keeps_the_previous_output(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    out = out_dir / "model.gguf"
    out.write_bytes(b"the previous good conversion")
    rewrite_weights(ckpt, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ConversionError):
        convert_checkpoint(ckpt.path, out)
    assert out.read_bytes() == b"the previous good conversion"
    assert [p.name for p in out_dir.iterdir()] == ["model.gguf"]


def test_existing_output_without_overwrite(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    out = out_dir / "model.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint(ckpt.path, out, overwrite=False)
    assert out.read_bytes() == b"keep me"


def test_interrupted_progress_leaves_nothing(tmp_path: Path, out_dir: Path) -> None:
    # A GUI cancels by raising from its progress callback; the partial file must go.
    ckpt = small_checkpoint(tmp_path, shards=2)

    class Cancelled(Exception):
        pass

    class CancelHalfway:
        done = 0

        def start(self, step: str, total_bytes: int) -> None:
            self.total = total_bytes

        def advance(self, n_bytes: int) -> None:
            self.done += n_bytes
            if self.done > self.total // 2:
                raise Cancelled

        def message(self, text: str) -> None:
            pass

        def finish(self) -> None:
            pass

    with pytest.raises(Cancelled):
        convert_checkpoint(ckpt.path, out_dir / "model.gguf", progress=CancelHalfway())
    assert list(out_dir.iterdir()) == []


def test_duplicate_tensor_across_shards(tmp_path: Path, out_dir: Path) -> None:
    ckpt = small_checkpoint(tmp_path)
    tensors = {n: (ckpt.dtype, encode(w, ckpt.dtype)) for n, w in ckpt.weights.items()}
    (ckpt.path / "model.safetensors").unlink()
    write_shards(ckpt.path, tensors, 2)
    write_safetensors(
        ckpt.path / shard_name(1, 2),
        {
            **{n: tensors[n] for n in list(tensors)[0::2]},
            "model.norm.weight": tensors["model.norm.weight"],
        },
    )
    assert "'model.norm.weight' appears in both" in refuse(ckpt.path, out_dir)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"num_hidden_layers": 1_000_000}, "num_hidden_layers is 1,000,000, beyond any real model"),
        ({"num_hidden_layers": 1e6}, "num_hidden_layers must be a positive integer, got 1000000.0"),
        ({"max_position_embeddings": 2**31}, "max_position_embeddings is 2,147,483,648, beyond"),
        ({"num_attention_heads": 100_000}, "num_attention_heads is 100,000, beyond any real model"),
        ({"hidden_size": 2**40}, "hidden_size is 1,099,511,627,776, beyond any real model"),
        ({"vocab_size": 10**9}, "vocab_size is 1,000,000,000, beyond any real model"),
    ],
    ids=["layers", "layers-float", "context", "heads", "width", "vocab"],
)
def test_absurd_config_is_refused_before_reading_tensors(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch, change, expected
) -> None:
    import convert.checkpoint

    ckpt = small_checkpoint(tmp_path)
    edit_json(ckpt.path / "config.json", lambda c: c.update(change))

    def must_not_read(path: Path) -> None:
        raise AssertionError(f"read {path.name} for a config that is refused anyway")

    monkeypatch.setattr(convert.checkpoint, "read_header", must_not_read)
    assert expected in refuse(ckpt.path, out_dir)


def test_absurd_layer_count_through_the_command_line(tmp_path: Path, out_dir: Path) -> None:
    import subprocess
    import sys

    from tests.convert.cli_process import PROJECT_ROOT

    ckpt = small_checkpoint(tmp_path)
    edit_json(ckpt.path / "config.json", lambda c: c.update(num_hidden_layers=1_000_000))
    done = subprocess.run(
        [sys.executable, "-m", "convert", "gguf", str(ckpt.path), "-o", str(out_dir / "m.gguf")],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "num_hidden_layers is 1,000,000" in lines[0], done.stderr
    assert list(out_dir.iterdir()) == []
