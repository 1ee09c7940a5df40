"""What the converter writes, read back with gguf's own reader: metadata, vocabulary, tensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.gguf_convert import _encode, _f32_to_bf16_bits, _has_nonfinite, convert_checkpoint
from convert.safetensors import SafetensorsDType
from convert.tensor_names import to_gguf_name
from tests.synthetic import DEMO_VOCAB_SIZE, TOKENIZER_DIR, Qwen2Shape, TokenizerKind
from tests.synthetic import build_checkpoint as _build

# Narrow, with the small demo tokenizer, so that conversions and read-backs take milliseconds;
# the full fixture vocabulary is checked once, on the shared tiny GGUF (reading its 300,000
# vocabulary strings back with GGUFReader alone takes ~10 s).
SMALL = Qwen2Shape(
    n_layers=2,
    hidden_size=8,
    intermediate_size=16,
    n_heads=2,
    n_kv_heads=1,
    vocab_size=DEMO_VOCAB_SIZE,
)


def build_checkpoint(folder: Path, **kwargs):
    return _build(folder, shape=SMALL, tokenizer=TokenizerKind.DEMO, **kwargs)


T = gguf.TokenType
Q = gguf.GGMLQuantizationType


def stored_tensors(ckpt_dir: Path) -> dict[str, tuple[str, bytes]]:
    """Every tensor's dtype and raw bytes, parsed from the files directly, not by the converter."""
    out = {}
    for path in sorted(ckpt_dir.glob("*.safetensors")):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        header.pop("__metadata__", None)
        for name, spec in header.items():
            begin, end = spec["data_offsets"]
            out[name] = (spec["dtype"], raw[8 + n + begin : 8 + n + end])
    return out


def fields(reader: gguf.GGUFReader) -> dict[str, object]:
    return {name: field.contents() for name, field in reader.fields.items()}


def tensor_values(tensor) -> np.ndarray:
    """A GGUF tensor as float32 in HF (row-major) shape."""
    shape = tuple(int(d) for d in reversed(tensor.shape))
    if tensor.tensor_type == Q.BF16:
        bits = np.frombuffer(bytes(tensor.data), dtype=np.uint16)
        return (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.asarray(tensor.data, dtype=np.float32).reshape(shape)


@pytest.fixture(scope="module")
def bf16_reader(tiny_gguf_bf16: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(tiny_gguf_bf16)


def test_model_metadata_is_exactly_what_llama_cpp_reads(bf16_reader: gguf.GGUFReader) -> None:
    kv = fields(bf16_reader)
    arch = "qwen2"
    expected = {
        gguf.Keys.General.ARCHITECTURE: arch,
        gguf.Keys.General.TYPE: "model",
        gguf.Keys.General.NAME: "Tiny-Qwen2",
        gguf.Keys.General.ORGANIZATION: "fathom-tests",
        gguf.Keys.General.BASENAME: "Tiny-Qwen2",
        # 2 x 152064 x 64 (embeddings and head) + 2 x 37,120 (blocks) + 64 (final norm) = 19.5M
        gguf.Keys.General.SIZE_LABEL: "20M",
        gguf.Keys.General.SOURCE_REPO_URL: "https://huggingface.co/fathom-tests/Tiny-Qwen2",
        gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch): 2,
        gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch): 4096,
        gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch): 64,
        gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch): 128,
        gguf.Keys.Attention.HEAD_COUNT.format(arch=arch): 4,
        gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch): 2,
        gguf.Keys.Rope.FREQ_BASE.format(arch=arch): 1e6,
        gguf.Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch): pytest.approx(1e-6, rel=1e-6),
        gguf.Keys.General.FILE_TYPE: gguf.LlamaFileType.MOSTLY_BF16,
        gguf.Keys.General.QUANTIZATION_VERSION: gguf.GGML_QUANT_VERSION,
        gguf.Keys.Tokenizer.MODEL: "gpt2",
        gguf.Keys.Tokenizer.PRE: "deepseek-r1-qwen",
        gguf.Keys.Tokenizer.BOS_ID: 151646,
        gguf.Keys.Tokenizer.EOS_ID: 151643,
        gguf.Keys.Tokenizer.PAD_ID: 151643,
        gguf.Keys.Tokenizer.ADD_BOS: True,
        gguf.Keys.Tokenizer.ADD_EOS: False,
    }
    assert {k: kv.get(k) for k in expected} == expected
    # Nothing beyond those, the vocabulary arrays, the template and the reader's own header fields.
    extra = set(kv) - set(expected) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    assert extra == {
        gguf.Keys.Tokenizer.LIST,
        gguf.Keys.Tokenizer.TOKEN_TYPE,
        gguf.Keys.Tokenizer.MERGES,
        gguf.Keys.Tokenizer.CHAT_TEMPLATE,
    }


def test_vocabulary_tokens_types_and_merges(bf16_reader: gguf.GGUFReader) -> None:
    kv = fields(bf16_reader)
    tokens = kv[gguf.Keys.Tokenizer.LIST]
    types = kv[gguf.Keys.Tokenizer.TOKEN_TYPE]
    merges = kv[gguf.Keys.Tokenizer.MERGES]
    source = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))

    assert len(tokens) == len(types) == 152064
    for text, token_id in list(source["model"]["vocab"].items())[::997]:
        assert (tokens[token_id], types[token_id]) == (text, T.NORMAL)
    by_id = {i: (tokens[i], types[i]) for i in (151643, 151644, 151645, 151646, 151648, 151649)}
    assert by_id == {
        151643: ("<｜end▁of▁sentence｜>", T.CONTROL),
        151644: ("<｜User｜>", T.CONTROL),
        151645: ("<｜Assistant｜>", T.CONTROL),
        151646: ("<｜begin▁of▁sentence｜>", T.CONTROL),
        # Not special in tokenizer.json: they must stay visible when detokenized.
        151648: ("<think>", T.USER_DEFINED),
        151649: ("</think>", T.USER_DEFINED),
    }
    assert tokens[151665:] == [f"[PAD{i}]" for i in range(151665, 152064)]
    assert set(types[151665:]) == {T.UNUSED}
    assert types.count(T.NORMAL) == 151643
    assert merges == source["model"]["merges"]


def test_chat_template_is_carried_verbatim(
    bf16_reader: gguf.GGUFReader, tiny_gguf_legacy: Path
) -> None:
    import llama_cpp

    def template(config: str) -> str:
        data = json.loads((TOKENIZER_DIR / config).read_text(encoding="utf-8"))
        return data["chat_template"]

    assert fields(bf16_reader)[gguf.Keys.Tokenizer.CHAT_TEMPLATE] == template(
        "tokenizer_config.json"
    )
    legacy = llama_cpp.Llama(str(tiny_gguf_legacy), vocab_only=True, verbose=False)
    try:
        carried = legacy.metadata[gguf.Keys.Tokenizer.CHAT_TEMPLATE]
    finally:
        legacy.close()
    assert carried == template("tokenizer_config.legacy-template.json")


def test_tensors_are_named_typed_and_shaped_for_llama_cpp(bf16_reader: gguf.GGUFReader) -> None:
    got = {t.name: (t.tensor_type, tuple(int(d) for d in t.shape)) for t in bf16_reader.tensors}
    expected = {"token_embd.weight": (Q.BF16, (64, 152064))}
    for i in range(2):
        b = f"blk.{i}."
        expected |= {
            b + "attn_norm.weight": (Q.F32, (64,)),
            b + "attn_q.weight": (Q.BF16, (64, 64)),
            b + "attn_q.bias": (Q.F32, (64,)),
            b + "attn_k.weight": (Q.BF16, (64, 32)),
            b + "attn_k.bias": (Q.F32, (32,)),
            b + "attn_v.weight": (Q.BF16, (64, 32)),
            b + "attn_v.bias": (Q.F32, (32,)),
            b + "attn_output.weight": (Q.BF16, (64, 64)),
            b + "ffn_norm.weight": (Q.F32, (64,)),
            b + "ffn_gate.weight": (Q.BF16, (64, 128)),
            b + "ffn_up.weight": (Q.BF16, (64, 128)),
            b + "ffn_down.weight": (Q.BF16, (128, 64)),
        }
    expected |= {"output_norm.weight": (Q.F32, (64,)), "output.weight": (Q.BF16, (64, 152064))}
    assert got == expected


def test_bf16_weights_are_the_checkpoints_bytes(
    bf16_reader: gguf.GGUFReader, tiny_checkpoint: Path
) -> None:
    stored = stored_tensors(tiny_checkpoint)
    by_name = {t.name: t for t in bf16_reader.tensors}
    for hf_name, (dtype, raw) in stored.items():
        tensor = by_name[to_gguf_name(hf_name).gguf]
        assert dtype == "BF16"
        if tensor.tensor_type == Q.BF16:
            assert bytes(tensor.data) == raw, hf_name
        else:  # 1-D: widened to f32, exactly
            widened = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            assert np.array_equal(np.asarray(tensor.data), widened), hf_name


@pytest.mark.parametrize(
    ("dtype", "outtype"),
    [
        ("BF16", "f32"),
        ("BF16", "f16"),
        ("F16", "bf16"),
        ("F16", "f32"),
        ("F32", "f16"),
        ("F32", "bf16"),
    ],
)
def test_other_source_and_output_types(tmp_path: Path, dtype: str, outtype: str) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt", dtype=dtype)
    out = convert_checkpoint(ckpt.path, tmp_path / "m.gguf", outtype).path
    reader = gguf.GGUFReader(out)
    weight_type, file_type = {
        "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
        "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
        "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    }[outtype]
    assert fields(reader)[gguf.Keys.General.FILE_TYPE] == file_type
    by_name = {t.name: t for t in reader.tensors}
    for hf_name, values in ckpt.weights.items():
        tensor = by_name[to_gguf_name(hf_name).gguf]
        if values.ndim == 1:
            assert tensor.tensor_type == Q.F32
            assert np.array_equal(tensor_values(tensor), values)
            continue
        assert tensor.tensor_type == weight_type
        if outtype == "f32":  # every source dtype widens to f32 exactly
            expected = values
        elif outtype == "f16":
            expected = values.astype(np.float16).astype(np.float32)
        else:
            expected = (_f32_to_bf16_bits(values).astype(np.uint32) << 16).view(np.float32)
        assert np.array_equal(tensor_values(tensor), expected), hf_name


def test_sharded_and_single_file_checkpoints_give_the_same_gguf(tmp_path: Path) -> None:
    single = build_checkpoint(tmp_path / "a" / "Tiny", seed=3)
    sharded = build_checkpoint(tmp_path / "b" / "Tiny", seed=3, shards=3)
    assert len(sharded.files) == 3

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def start(self, step: str, total_bytes: int) -> None:
            self.calls.append(("start", step, total_bytes))

        def advance(self, n_bytes: int) -> None:
            self.calls.append(("advance", n_bytes))

        def message(self, text: str) -> None:
            pass

        def finish(self) -> None:
            self.calls.append(("finish",))

    recorder = Recorder()
    a = convert_checkpoint(single.path, tmp_path / "a.gguf", chunk_bytes=4096)
    b = convert_checkpoint(sharded.path, tmp_path / "b.gguf", progress=recorder, chunk_bytes=4096)
    assert a.path.read_bytes() == b.path.read_bytes()

    tensor_bytes = sum(t.n_bytes for t in gguf.GGUFReader(b.path).tensors)
    assert recorder.calls[0] == ("start", "convert", tensor_bytes)
    advances = [c[1] for c in recorder.calls if c[0] == "advance"]
    assert sum(advances) == tensor_bytes and max(advances) <= 4096
    assert recorder.calls[-1] == ("finish",)
    assert (b.n_tensors, b.n_bytes, b.architecture, b.outtype) == (
        27,
        b.path.stat().st_size,
        "qwen2",
        "bf16",
    )


def test_tied_embeddings_have_no_output_tensor(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt", tied=True)
    assert "lm_head.weight" not in ckpt.weights
    reader = gguf.GGUFReader(convert_checkpoint(ckpt.path, tmp_path / "m.gguf").path)
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    assert len(names) == 2 * 12 + 2
    # llama.cpp falls back to the embeddings for the head.
    import llama_cpp

    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=16, verbose=False)
    try:
        assert llm.n_vocab() == DEMO_VOCAB_SIZE
    finally:
        llm.close()


def test_source_revision_and_name_from_the_repo(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "snapshot-3f2a")
    result = convert_checkpoint(
        ckpt.path,
        tmp_path / "m.gguf",
        source_repo="FractalAIResearch/Fathom-R1-14B",
        source_revision="0123abcd",
    )
    kv = fields(gguf.GGUFReader(result.path))
    assert result.name == kv[gguf.Keys.General.NAME] == "Fathom-R1-14B"
    assert kv[gguf.Keys.General.BASENAME] == "Fathom-R1"
    assert kv[gguf.Keys.General.ORGANIZATION] == "FractalAIResearch"
    # The name's "14B" is far from this toy's size; gguf then reads it as a fine-tune tag.
    assert kv[gguf.Keys.General.SOURCE_URL] == (
        "https://huggingface.co/FractalAIResearch/Fathom-R1-14B/tree/0123abcd"
    )


# --- The per-window arithmetic, on every source/output pair ----------------------------------

_VALUES = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, 1e-3, 6e4, -1e-7], dtype=np.float32)


@pytest.mark.parametrize("src", list(SafetensorsDType))
@pytest.mark.parametrize("out", [Q.F32, Q.F16, Q.BF16])
def test_window_encoding(src: SafetensorsDType, out: Q) -> None:
    stored = {
        SafetensorsDType.BF16: _f32_to_bf16_bits(_VALUES),
        SafetensorsDType.F16: _VALUES.astype(np.float16),
        SafetensorsDType.F32: _VALUES,
    }[src]
    exact = (
        (stored.astype(np.uint32) << 16).view(np.float32)
        if src is SafetensorsDType.BF16
        else stored.astype(np.float32)
    )
    encoded = _encode(stored, src, out)
    if out == Q.F32:
        assert encoded.dtype == np.float32 and np.array_equal(encoded, exact)
    elif out == Q.F16:
        assert encoded.dtype == np.float16 and np.array_equal(encoded, exact.astype(np.float16))
    else:
        assert encoded.dtype == np.uint16 and np.array_equal(encoded, _f32_to_bf16_bits(exact))
    if src.ggml_type == out:
        assert encoded is stored  # passthrough: no copy, no conversion


def test_bf16_rounds_to_nearest_even() -> None:
    halfway_down = np.float32(1 + 2**-8)  # between 1.0 (0x3F80) and 1.0078125 (0x3F81)
    halfway_up = np.float32(1 + 3 * 2**-8)  # between 0x3F81 and 0x3F82
    above_half = np.float32(1 + 2**-8 + 2**-20)
    bits = _f32_to_bf16_bits(np.array([halfway_down, halfway_up, above_half, -halfway_down]))
    assert bits.tolist() == [0x3F80, 0x3F82, 0x3F81, 0xBF80]


@pytest.mark.parametrize("kind", [Q.F32, Q.F16, Q.BF16])
def test_nonfinite_detection(kind: Q) -> None:
    def stored(values: list[float]) -> np.ndarray:
        f32 = np.array(values, dtype=np.float32)
        if kind == Q.BF16:
            return _f32_to_bf16_bits(f32)
        return f32.astype(np.float16 if kind == Q.F16 else np.float32)

    largest = {Q.F32: 3.4e38, Q.F16: 65504.0, Q.BF16: 3.38e38}[kind]
    assert not _has_nonfinite(stored([0.0, -largest, largest, 1e-30]), kind)
    for bad in (np.nan, np.inf, -np.inf):
        assert _has_nonfinite(stored([1.0, bad, 2.0]), kind)
    assert not _has_nonfinite(stored([]), kind)


def test_name_table_agrees_with_ggufs_own_mapping() -> None:
    # gguf's TensorNameMap is what llama.cpp's converter uses; ours must name every tensor alike.
    from convert.checkpoint import Qwen2HParams, expected_shapes

    hp = Qwen2HParams(3, 64, 128, 4, 2, 1000, 4096, 1e6, 1e-6, tie_word_embeddings=False)
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, hp.n_layers)
    for hf_name in expected_shapes(hp):
        ours = to_gguf_name(hf_name)
        assert ours.gguf == mapping.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert ours.kind in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN2]
    assert to_gguf_name("model.layers.0.mlp.experts.0.up_proj.weight") is None
    assert to_gguf_name("model.vision_tower.weight") is None
