"""A fast, bounds-checked reader of a GGUF's header: metadata and the tensor table.

gguf.GGUFReader builds one numpy view per vocabulary entry, which takes about ten seconds for
Fathom's 152k-token vocabulary and 151k merges on a desktop CPU; a model check that runs before
every load cannot afford that. This reader follows the same format (gguf's own constants for
magic, value types, alignment and block sizes) but only walks over large arrays, recording their
length. Every read is checked against the file size, so a truncated or random file fails with a
reason instead of a crash or a huge allocation.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

# Arrays up to this length keep their values (e.g. per-layer head counts); longer ones (the
# vocabulary, merges, token types) are only measured.
_SMALL_ARRAY = 64
_MAX_DIMS = 4  # GGML_MAX_DIMS
_SCALAR_FORMATS: dict[gguf.GGUFValueType, str] = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


class GgufFormatError(ValueError):
    """The bytes do not follow the GGUF format; str() says where."""


class NotGgufError(GgufFormatError):
    """The file does not even start like a GGUF."""


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array, measured but not loaded."""

    element_type: gguf.GGUFValueType
    length: int


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] (the row length) first
    ggml_type: gguf.GGMLQuantizationType
    offset: int  # absolute position in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, Any]
    tensors: tuple[GgufTensor, ...]
    data_offset: int
    file_size: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


class _Cursor:
    def __init__(self, data: mmap.mmap | bytes, size: int) -> None:
        self.data = data
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GgufFormatError(f"the file ends inside the header ({what} at byte {self.pos:,})")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        length = self.unpack("<Q", what)
        self.need(length, what)
        raw = bytes(self.data[self.pos : self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GgufFormatError(f"{what} is not valid UTF-8") from None

    def skip_string(self, what: str) -> None:
        length = self.unpack("<Q", what)
        self.need(length, what)
        self.pos += length


def _value_type(raw: int, what: str) -> gguf.GGUFValueType:
    try:
        return gguf.GGUFValueType(raw)
    except ValueError:
        raise GgufFormatError(f"{what} has an unknown value type {raw}") from None


def _read_value(cursor: _Cursor, value_type: gguf.GGUFValueType, key: str) -> Any:
    if value_type is gguf.GGUFValueType.STRING:
        return cursor.string(f"the value of {key}")
    if value_type is gguf.GGUFValueType.ARRAY:
        element_type = _value_type(cursor.unpack("<I", key), f"the array {key}")
        length = cursor.unpack("<Q", key)
        if length <= _SMALL_ARRAY:
            return [_read_value(cursor, element_type, key) for _ in range(length)]
        _skip_array(cursor, element_type, length, key)
        return ArraySummary(element_type, length)
    return cursor.unpack(_SCALAR_FORMATS[value_type], f"the value of {key}")


def _skip_array(cursor: _Cursor, element_type: gguf.GGUFValueType, length: int, key: str) -> None:
    if element_type is gguf.GGUFValueType.STRING:
        # Each string is at least its 8-byte length: reject absurd counts before looping.
        cursor.need(length * 8, f"the array {key}")
        for _ in range(length):
            cursor.skip_string(f"an entry of {key}")
    elif element_type is gguf.GGUFValueType.ARRAY:
        for _ in range(length):
            _read_value(cursor, element_type, key)
    else:
        size = struct.calcsize(_SCALAR_FORMATS[element_type])
        cursor.need(length * size, f"the array {key}")
        cursor.pos += length * size


def _read_tensor_info(
    cursor: _Cursor,
) -> tuple[str, tuple[int, ...], gguf.GGMLQuantizationType, int]:
    name = cursor.string("a tensor name")
    n_dims = cursor.unpack("<I", f"the shape of {name}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise GgufFormatError(f"tensor {name} claims {n_dims} dimensions")
    shape = tuple(cursor.unpack("<Q", f"the shape of {name}") for _ in range(n_dims))
    raw_type = cursor.unpack("<I", f"the type of {name}")
    try:
        ggml_type = gguf.GGMLQuantizationType(raw_type)
    except ValueError:
        raise GgufFormatError(f"tensor {name} has an unknown type {raw_type}") from None
    offset = cursor.unpack("<Q", f"the offset of {name}")
    return name, shape, ggml_type, offset


def read_gguf_header(path: Path) -> GgufHeader:
    """Parse metadata and tensor table; raises NotGgufError / GgufFormatError with a reason."""
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        if size < 4:
            raise NotGgufError("the file is too short to be a GGUF")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(_Cursor(data, size))


def _parse(cursor: _Cursor) -> GgufHeader:
    if cursor.unpack("<I", "the magic number") != gguf.GGUF_MAGIC:
        raise NotGgufError("the file does not start with the GGUF magic number")
    version = cursor.unpack("<I", "the version")
    if version & 0xFFFF == 0:
        raise GgufFormatError("the file is a big-endian GGUF, which this computer cannot run")
    if version not in (2, gguf.GGUF_VERSION):
        raise GgufFormatError(f"GGUF version {version} is not supported")
    n_tensors = cursor.unpack("<Q", "the tensor count")
    n_kv = cursor.unpack("<Q", "the metadata count")
    # Each entry takes well over 8 bytes, so counts beyond size/8 are corrupt.
    if n_tensors > cursor.size // 8 or n_kv > cursor.size // 8:
        raise GgufFormatError("the header's counts are larger than the file")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cursor.string("a metadata key")
        value_type = _value_type(cursor.unpack("<I", key), key)
        metadata[key] = _read_value(cursor, value_type, key)

    alignment = metadata.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GgufFormatError(f"the alignment {alignment!r} is not a power of two")

    infos = [_read_tensor_info(cursor) for _ in range(n_tensors)]
    data_offset = -(-cursor.pos // alignment) * alignment

    tensors: list[GgufTensor] = []
    seen: set[str] = set()
    for name, shape, ggml_type, relative in infos:
        if name in seen:
            raise GgufFormatError(f"tensor {name} appears twice")
        seen.add(name)
        block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        if shape[0] % block_size:
            raise GgufFormatError(
                f"tensor {name}: a row of {shape[0]} does not fit {ggml_type.name} blocks"
            )
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        n_bytes = n_elements // block_size * type_size
        tensors.append(GgufTensor(name, shape, ggml_type, data_offset + relative, n_bytes))
    return GgufHeader(version, metadata, tuple(tensors), data_offset, cursor.size)
