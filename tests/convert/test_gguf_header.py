"""The one GGUF header reader (inspect, quantize, manifest and the engine's model check use it)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.gguf_header import (
    GgufFormatError,
    NotGgufError,
    SkippedArray,
    read_gguf_header,
)
from tests.convert.test_quantize import write_ladder_model
from tests.engine.tiny_models import small_qwen2

_T = gguf.GGMLQuantizationType


def write_gguf(
    path: Path,
    tensors: dict[str, np.ndarray] | None = None,
    metadata: Callable[[gguf.GGUFWriter], None] | None = None,
    endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
) -> Path:
    """A small complete GGUF with the given F32 tensors and extra metadata."""
    writer = gguf.GGUFWriter(str(path), "qwen2", endianess=endianess)
    if metadata is not None:
        metadata(writer)
    for name, data in (tensors or {"a.weight": np.ones(64, np.float32)}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _end_of_string(data: bytes, text: str) -> int:
    """Where the bytes after a length-prefixed string (a key or a tensor name) start."""
    raw = text.encode()
    start = data.index(len(raw).to_bytes(8, "little") + raw)
    return start + 8 + len(raw)


def _reason(path: Path, error: type[GgufFormatError] = GgufFormatError) -> str:
    with pytest.raises(error) as raised:
        read_gguf_header(path)
    return str(raised.value)


def test_the_header_reader_agrees_with_gguf_py(tmp_path: Path) -> None:
    path = write_ladder_model(tmp_path / "m.gguf", chat_template="{{ messages }}")
    ours = read_gguf_header(path, keep_string_arrays=frozenset({gguf.Keys.Tokenizer.LIST}))
    theirs = gguf.GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.offset == ref.data_offset
        assert mine.n_bytes == ref.n_bytes
        assert mine.n_elements == ref.n_elements
        assert mine.ggml_type == ref.tensor_type
    tokens = theirs.get_field(gguf.Keys.Tokenizer.LIST)
    assert ours.get(gguf.Keys.Tokenizer.LIST) == [bytes(tokens.parts[i]) for i in tokens.data]
    types = theirs.get_field(gguf.Keys.Tokenizer.TOKEN_TYPE)
    assert np.array_equal(
        ours.get(gguf.Keys.Tokenizer.TOKEN_TYPE), [types.parts[i][0] for i in types.data]
    )
    assert ours.integer("qwen2.embedding_length") == 256
    assert ours.string(gguf.Keys.Tokenizer.CHAT_TEMPLATE) == "{{ messages }}"
    assert ours.get(gguf.Keys.Tokenizer.MERGES).length == 2  # measured, not kept
    assert ours.file_size == path.stat().st_size
    assert ours.data_end <= ours.file_size


def test_header_reader_agrees_with_gguf_reader_on_the_tensor_table(tmp_path: Path) -> None:
    path = small_qwen2(tmp_path / "mixed.gguf")
    header = read_gguf_header(path)
    ours = {t.name: (t.shape, t.ggml_type, t.offset, t.n_bytes) for t in header.tensors}
    reference = gguf.GGUFReader(path)
    theirs = {
        t.name: (tuple(int(d) for d in t.shape), t.tensor_type, t.data_offset, t.n_bytes)
        for t in reference.tensors
    }
    assert ours == theirs
    assert {t.ggml_type for t in header.tensors} >= {_T.Q8_0, _T.F16}
    for key in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.Tokenizer.CHAT_TEMPLATE):
        assert header.get(key) == reference.fields[key].contents()


def test_every_value_type_reads_as_gguf_py_reads_it(tmp_path: Path) -> None:
    def metadata(w: gguf.GGUFWriter) -> None:
        w.add_uint8("t.u8", 200)
        w.add_int8("t.i8", -100)
        w.add_uint16("t.u16", 60000)
        w.add_int16("t.i16", -30000)
        w.add_uint32("t.u32", 4_000_000_000)
        w.add_int32("t.i32", -2_000_000_000)
        w.add_uint64("t.u64", 2**63 + 5)
        w.add_int64("t.i64", -(2**62))
        w.add_float32("t.f32", 0.25)
        w.add_float64("t.f64", 1e-300)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "<think>\n")
        w.add_array("t.ints", [3, 1, 4, 1, 5])
        w.add_array("t.words", ["a", "bc"])

    path = write_gguf(tmp_path / "types.gguf", metadata=metadata)
    header = read_gguf_header(path, keep_string_arrays=frozenset({"t.words"}))
    reference = gguf.GGUFReader(path)
    for key in ("t.u8", "t.i8", "t.u16", "t.i16", "t.u32", "t.i32", "t.u64", "t.i64"):
        assert header.get(key) == reference.fields[key].contents(), key
        assert header.integer(key) == header.get(key)
    assert header.get("t.f32") == 0.25 and header.get("t.f64") == 1e-300
    assert header.get("t.bool") is True and header.integer("t.bool") is None
    assert header.string("t.str") == "<think>\n" and header.integer("t.str") is None
    assert list(header.get("t.ints")) == reference.fields["t.ints"].contents()
    assert header.get("t.words") == [b"a", b"bc"]
    assert header.version == gguf.GGUF_VERSION
    # Not asked for: measured only.
    unkept = read_gguf_header(path).get("t.words")
    assert unkept == SkippedArray(gguf.GGUFValueType.STRING, 2)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "too short"),
        (b"GGU", "too short"),
        (b"PK\x03\x04 a zip file, not a model" * 4, "GGUF magic number"),
        (b"hello", "GGUF magic number"),
    ],
)
def test_foreign_files_are_not_ggufs(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "notes.gguf"
    path.write_bytes(content)
    assert reason in _reason(path, NotGgufError)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"GGUF" + bytes(10), "too short"),
        (b"GGUF\x09\x00\x00\x00" + b"\x00" * 40, "version 9"),
        (b"GGUF\x03\x00\x00\x00" + b"\xff" * 16 + bytes(1000), "more entries than the file"),
    ],
)
def test_ggufs_with_a_broken_start_are_damaged_not_foreign(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GgufFormatError) as raised:
        read_gguf_header(path)
    assert not isinstance(raised.value, NotGgufError)
    assert reason in str(raised.value)


def test_a_big_endian_file_is_named_as_such(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "be.gguf", endianess=gguf.GGUFEndian.BIG)
    assert "big-endian" in _reason(path)


def test_tensor_data_past_the_end(tmp_path: Path) -> None:
    path = small_qwen2(tmp_path / "m.gguf")
    whole = path.read_bytes()
    path.write_bytes(whole[:-100])
    reason = _reason(path)
    assert reason.startswith("it is truncated: tensor ")
    assert f"of {len(whole) - 100:,}" in reason
    # The model check explains an incomplete file in its own words, after the header.
    header = read_gguf_header(path, check_tensor_data=False)
    assert header.data_end > header.file_size == len(whole) - 100


def test_a_tensor_named_twice(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "twice.gguf",
        {"a.weight": np.ones(32, np.float32), "b.weight": np.ones(32, np.float32)},
    )
    path.write_bytes(path.read_bytes().replace(b"b.weight", b"a.weight"))
    assert "tensor a.weight appears twice" in _reason(path)


def test_rows_that_do_not_fit_the_type_blocks(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "rows.gguf", {"a.weight": np.ones(48, np.float32)})
    data = bytearray(path.read_bytes())
    type_at = _end_of_string(data, "a.weight") + 4 + 8  # n_dims, then one dimension
    data[type_at : type_at + 4] = int(_T.Q8_0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert "a row of 48 does not fit Q8_0 blocks" in _reason(path)


def test_unknown_tensor_type_and_too_many_dimensions(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "t.gguf")
    good = path.read_bytes()
    n_dims_at = _end_of_string(good, "a.weight")
    data = bytearray(good)
    data[n_dims_at + 12 : n_dims_at + 16] = (9999).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert "tensor a.weight has an unknown type 9999" in _reason(path)
    data = bytearray(good)
    data[n_dims_at : n_dims_at + 4] = (7).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert "tensor a.weight claims 7 dimensions" in _reason(path)


def test_unknown_value_type(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "v.gguf", metadata=lambda w: w.add_uint32("t.x", 1))
    data = bytearray(path.read_bytes())
    at = _end_of_string(data, "t.x")
    data[at : at + 4] = (77).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert "t.x has an unknown value type 77" in _reason(path)


def test_an_alignment_that_is_not_a_power_of_two(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "a.gguf", metadata=lambda w: w.add_uint32(gguf.Keys.General.ALIGNMENT, 32)
    )
    data = bytearray(path.read_bytes())
    at = _end_of_string(data, gguf.Keys.General.ALIGNMENT) + 4
    data[at : at + 4] = (48).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert "alignment 48 is not a power of two" in _reason(path)


def test_damage_anywhere_is_a_format_error_that_points_inside_the_file(tmp_path: Path) -> None:
    """Every cut point and a spray of flipped bytes: a GgufFormatError or a good read."""
    path = write_ladder_model(tmp_path / "good.gguf", n_layers=1)
    good = path.read_bytes()
    header_end = read_gguf_header(path).data_offset
    damaged = tmp_path / "damaged.gguf"
    rng = np.random.default_rng(7)
    samples = [good[:cut] for cut in range(0, header_end, max(1, header_end // 80))]
    samples.append(good[:-1])
    for _ in range(150):
        data = bytearray(good)
        for pos in rng.integers(0, header_end, size=4):
            data[pos] = int(rng.integers(0, 256))
        samples.append(bytes(data))
    failures = 0
    for sample, keep in itertools.product(samples, (frozenset(), {gguf.Keys.Tokenizer.LIST})):
        damaged.write_bytes(sample)
        try:
            read_gguf_header(damaged, keep_string_arrays=frozenset(keep))
        except GgufFormatError as error:
            failures += 1
            message = str(error)
            assert "\n" not in message
            if inside := re.search(r"ends inside the header \(.* at byte ([\d,]+)\)", message):
                assert int(inside.group(1).replace(",", "")) <= len(sample), message
    assert failures > len(samples)  # of 2 * len(samples) reads
