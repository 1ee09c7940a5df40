"""The safetensors reader: exact data back from valid files, one clear line for every broken one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convert.errors import ConversionError
from convert.safetensors import SafetensorsDType, TensorStream, read_header
from tests.synthetic import bf16_bits, safetensors_header, write_safetensors


def _raw_file(
    path: Path, header: bytes | dict, data: bytes = b"", length: int | None = None
) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(raw) if length is None else length
    path.write_bytes(size.to_bytes(8, "little") + raw + data)
    return path


def _one(dtype: str, shape: list[int], offsets: list[int], data_bytes: int):
    """A builder for a file holding one tensor 'x' described by the given header fields."""
    spec = {"x": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}
    return lambda p: _raw_file(p, spec, b"\0" * data_bytes)


def test_reads_every_dtype_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((3, 5)).astype(np.float32)
    path = tmp_path / "m.safetensors"
    write_safetensors(
        path,
        {
            "a": ("BF16", bf16_bits(values)),
            "b": ("F16", values.astype(np.float16)),
            "c": ("F32", values),
        },
    )
    header = read_header(path)
    assert {n: (e.dtype, e.shape) for n, e in header.tensors.items()} == {
        "a": (SafetensorsDType.BF16, (3, 5)),
        "b": (SafetensorsDType.F16, (3, 5)),
        "c": (SafetensorsDType.F32, (3, 5)),
    }
    assert header.metadata == {"format": "pt"}
    with TensorStream(path) as stream:
        assert np.array_equal(stream.read(header.tensors["a"]), bf16_bits(values))
        assert np.array_equal(stream.read(header.tensors["b"]), values.astype(np.float16))
        assert np.array_equal(stream.read(header.tensors["c"]), values)


def test_windows_reassemble_the_tensor_whatever_the_window_size(tmp_path: Path) -> None:
    # Windows start at unaligned offsets and cross mmap granularity; the bytes must still line up.
    data = np.arange(100_003, dtype=np.float32)
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"pad": ("F16", np.ones(3, np.float16)), "x": ("F32", data)})
    entry = read_header(path).tensors["x"]
    assert entry.begin % 4 == 2  # the 3 f16 before it leave the f32 data misaligned
    with TensorStream(path) as stream:
        for window in (4096 + 4, 65536, 1 << 22):
            pieces = [chunk.copy() for chunk in stream.chunks(entry, window)]
            assert all(p.nbytes <= window for p in pieces)
            assert np.array_equal(np.concatenate(pieces), data)


def test_empty_tensor_and_empty_file_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"e": ("F32", np.zeros((0, 4), np.float32))})
    entry = read_header(path).tensors["e"]
    with TensorStream(path) as stream:
        assert list(stream.chunks(entry, 1024)) == []


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: p.write_bytes(b"\x10\x00"), "is truncated: it has 2 bytes"),
        (lambda p: _raw_file(p, {"x": 1}, length=10_000), "its header needs 10000 bytes"),
        (lambda p: _raw_file(p, b"{not json", length=9), "corrupt header: it is not valid JSON"),
        (lambda p: _raw_file(p, b"\xff\xfe{}"), "corrupt header: it is not valid JSON"),
        (lambda p: _raw_file(p, b"[1, 2]"), "corrupt header: expected a JSON object"),
        (lambda p: _raw_file(p, b"{}", length=200_000_000), "claims 200000000 bytes of header"),
        (
            _one("F32", [4], [0, 16], 8),
            "tensor 'x' has data offsets [0, 16] outside the file's 8 data bytes",
        ),
        (
            lambda p: _raw_file(
                p,
                {
                    "x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "y": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
                },
                b"\0" * 24,
            ),
            "tensors 'x' and 'y' overlap",
        ),
        (_one("Q9", [1], [0, 1], 1), "tensor 'x' has unknown dtype 'Q9'"),
        (
            _one("I64", [1], [0, 8], 8),
            "tensor 'x' has unsupported dtype 'I64'; only BF16, F16 and F32",
        ),
        (_one("F32", [3], [0, 8], 8), "needs 12 bytes but its offsets span 8"),
        (_one("F32", [-1], [0, 4], 4), "tensor 'x' has an invalid shape [-1]"),
        (_one("F32", [1], [4], 4), "tensor 'x' has invalid data_offsets [4]"),
        (
            lambda p: _raw_file(p, {"__metadata__": {"a": 1}}),
            "__metadata__ must map strings to strings",
        ),
    ],
    ids=[
        "shorter-than-length-field",
        "header-past-end",
        "bad-json",
        "not-utf8",
        "not-an-object",
        "header-too-large",
        "offsets-past-end",
        "overlap",
        "unknown-dtype",
        "unsupported-dtype",
        "size-mismatch",
        "negative-shape",
        "bad-offsets",
        "bad-metadata",
    ],
)
def test_broken_headers_are_refused_with_the_file_name(tmp_path: Path, build, message: str) -> None:
    path = tmp_path / "model-00001-of-00002.safetensors"
    build(path)
    with pytest.raises(ConversionError) as caught:
        read_header(path)
    text = str(caught.value)
    assert message in text
    assert text.startswith(path.name)
    assert "\n" not in text


def test_truncated_data_is_caught_from_the_header_alone(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    layout = {"w": ("BF16", (64, 64), 64 * 64 * 2)}
    path.write_bytes(safetensors_header(layout) + b"\0" * 1000)  # a download cut short
    with pytest.raises(ConversionError, match=r"model.safetensors: tensor 'w' has data offsets"):
        read_header(path)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 600)),
)
def test_any_damage_gives_a_readable_error_never_a_crash(tmp_path: Path, edits, cut) -> None:
    path = tmp_path / "fuzzed.safetensors"
    write_safetensors(
        path,
        {
            "a": ("BF16", np.arange(6, dtype=np.uint16).reshape(2, 3)),
            "b": ("F32", np.ones(4, np.float32)),
        },
    )
    data = bytearray(path.read_bytes())
    for position, value in edits:
        if position < len(data):
            data[position] = value
    path.write_bytes(bytes(data[:cut] if cut is not None else data))
    try:
        header = read_header(path)
    except ConversionError as e:
        assert "\n" not in str(e) and str(e).startswith(path.name)
        return
    with TensorStream(path) as stream:  # whatever passed validation must be readable
        for entry in header.tensors.values():
            assert sum(c.nbytes for c in stream.chunks(entry, 8)) == entry.nbytes
