"""A fast, bounds-checked reader of a GGUF's header: metadata and the tensor table.

The one reader behind `fathom-convert inspect`, the quantizer's checks of its input and output,
the manifest, and the engine's check before every model load (so it must not import llama.cpp).
gguf.GGUFReader builds a numpy view per vocabulary entry, which takes 10-25 s for Fathom's 152k
tokens and 151k merges; this follows the same format with gguf's own constants (magic, value
types, alignment, block sizes) but walks over string arrays, keeping only those asked for, and
copies numeric arrays out in one piece. Every read is checked against the file size, so a
truncated or random file fails with a reason instead of a crash or a huge allocation.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

_V = gguf.GGUFValueType
_SCALAR_FORMATS: dict[gguf.GGUFValueType, str] = {
    _V.UINT8: "<B", _V.INT8: "<b", _V.UINT16: "<H", _V.INT16: "<h", _V.UINT32: "<I",
    _V.INT32: "<i", _V.FLOAT32: "<f", _V.BOOL: "<?", _V.UINT64: "<Q", _V.INT64: "<q",
    _V.FLOAT64: "<d",
}  # fmt: skip
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Magic, version, tensor count and metadata count: a file shorter than this has no header.
_FIXED_HEADER_BYTES = 24
_STRING_LENGTH = struct.Struct("<Q")
_MAGIC_BYTES = 4


def file_type_name(raw: object, *, show_unknown_value: bool = True) -> str:
    """`LlamaFileType.MOSTLY_Q4_K_M` (or its number) -> "Q4_K_M".

    Anything else reads "unknown (N)", the number being what a bug report needs; with
    show_unknown_value=False it is plain "unknown", for a user-facing summary of a model file.
    """
    try:
        name = gguf.LlamaFileType(int(raw)).name  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return f"unknown ({raw})" if show_unknown_value else "unknown"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


class GgufFormatError(ValueError):
    """The bytes are not a well-formed GGUF; str() says what is wrong."""


class NotGgufError(GgufFormatError):
    """The file does not even start like a GGUF (as opposed to a damaged one)."""


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array of strings that was measured but not kept (e.g. the 151k merges)."""

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
        return math.prod(self.shape)


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    version: int
    file_size: int
    # Strings as str, numbers as Python scalars, numeric arrays as numpy arrays, string arrays
    # as lists of bytes when asked for and SkippedArray otherwise.
    metadata: dict[str, Any]
    tensors: tuple[GgufTensor, ...]
    data_offset: int

    @property
    def data_end(self) -> int:
        """Where the last tensor's data ends: a file shorter than this is incomplete."""
        return max((t.offset + t.n_bytes for t in self.tensors), default=self.data_offset)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def integer(self, key: str) -> int | None:
        value = self.metadata.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
        return None

    def string(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None


class _Cursor:
    """A bounds-checked position in the mapped file."""

    def __init__(self, data: mmap.mmap, size: int) -> None:
        self.data, self.size, self.pos = data, size, 0

    def ended(self, what: str) -> GgufFormatError:
        return GgufFormatError(f"the file ends inside the header ({what} at byte {self.pos:,})")

    def take(self, n: int, what: str) -> int:
        """Reserve n bytes; returns where they start."""
        if n < 0 or self.pos + n > self.size:
            raise self.ended(what)
        start, self.pos = self.pos, self.pos + n
        return start

    def number(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, start)[0]

    def raw_string(self, what: str) -> bytes:
        n = self.number("<Q", what)
        start = self.take(n, what)
        return self.data[start : start + n]

    def string(self, what: str) -> str:
        try:
            return self.raw_string(what).decode("utf-8")
        except UnicodeDecodeError:
            raise GgufFormatError(f"{what} is not valid UTF-8") from None

    def skip_strings(self, count: int, what: str) -> None:
        # The vocabulary and merges are 300k entries: a tight loop over locals, not take().
        data, size, pos = self.data, self.size, self.pos
        unpack = _STRING_LENGTH.unpack_from
        for _ in range(count):
            if pos + 8 <= size:
                length = unpack(data, pos)[0]
                pos += 8
                if pos + length <= size:
                    pos += length
                    continue
            self.pos = pos
            raise self.ended(what)
        self.pos = pos


def _value_type(raw: int, what: str) -> gguf.GGUFValueType:
    try:
        return gguf.GGUFValueType(raw)
    except ValueError:
        raise GgufFormatError(f"{what} has an unknown value type {raw}") from None


def _value(cur: _Cursor, kind: gguf.GGUFValueType, key: str, keep_strings: bool) -> Any:
    if kind is _V.STRING:
        return cur.string(f"the value of {key}")
    if kind is not _V.ARRAY:
        return cur.number(_SCALAR_FORMATS[kind], f"the value of {key}")
    item = _value_type(cur.number("<I", key), f"the array {key}")
    length = cur.number("<Q", key)
    if item in _SCALAR_FORMATS:
        dtype = np.dtype(_SCALAR_FORMATS[item])
        start = cur.take(length * dtype.itemsize, f"the array {key}")
        return np.frombuffer(cur.data, dtype, length, start).copy()  # the map is closed later
    # Every entry takes at least 8 bytes (a string's length): refuse absurd counts before looping.
    if length * 8 > cur.size - cur.pos:
        raise GgufFormatError(f"the array {key} claims more entries than the file holds")
    if item is _V.STRING:
        if keep_strings:
            return [cur.raw_string(f"an entry of {key}") for _ in range(length)]
        cur.skip_strings(length, f"an entry of {key}")
        return SkippedArray(item, length)
    return [_value(cur, item, key, keep_strings) for _ in range(length)]


def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], gguf.GGMLQuantizationType, int]:
    name = cur.string("a tensor name")
    n_dims = cur.number("<I", f"the shape of {name}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise GgufFormatError(f"tensor {name} claims {n_dims} dimensions")
    shape = tuple(cur.number("<Q", f"the shape of {name}") for _ in range(n_dims))
    raw_type = cur.number("<I", f"the type of {name}")
    try:
        ggml_type = gguf.GGMLQuantizationType(raw_type)
    except ValueError:
        raise GgufFormatError(f"tensor {name} has an unknown type {raw_type}") from None
    return name, shape, ggml_type, cur.number("<Q", f"the offset of {name}")


def read_gguf_header(
    path: Path | str,
    *,
    keep_string_arrays: frozenset[str] = frozenset(),
    check_tensor_data: bool = True,
) -> GgufHeader:
    """Read a GGUF's metadata and tensor table, checking every offset against the file.

    Raises NotGgufError for a file that is not a GGUF at all and GgufFormatError, with the
    reason, for a damaged one; with check_tensor_data, also when a tensor's data runs past the
    end (pass False to tell the user about an incomplete file in your own words).
    """
    path = Path(path)
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size < _MAGIC_BYTES:
            raise NotGgufError("the file is too short to be a GGUF")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            header = _parse(path, _Cursor(data, size), keep_string_arrays)
    if check_tensor_data:
        for t in header.tensors:
            if t.offset + t.n_bytes > size:
                raise GgufFormatError(
                    f"it is truncated: tensor {t.name} ends at byte {t.offset + t.n_bytes:,} "
                    f"of {size:,}"
                )
    return header


def _parse(path: Path, cur: _Cursor, keep: frozenset[str]) -> GgufHeader:
    if cur.number("<I", "the magic number") != gguf.GGUF_MAGIC:
        raise NotGgufError("the file does not start with the GGUF magic number")
    if cur.size < _FIXED_HEADER_BYTES:
        raise GgufFormatError("the file is too short to be a GGUF")
    version = cur.number("<I", "the version")
    if version and not version & 0xFFFF:
        raise GgufFormatError("the file is a big-endian GGUF, which this computer cannot run")
    if version not in (2, gguf.GGUF_VERSION):
        raise GgufFormatError(f"GGUF version {version} is not supported")
    n_tensors = cur.number("<Q", "the tensor count")
    n_kv = cur.number("<Q", "the metadata count")
    # Each entry takes well over 8 bytes, so counts beyond size/8 are corrupt.
    if max(n_tensors, n_kv) > cur.size // 8:
        raise GgufFormatError("the header counts more entries than the file can hold")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        kind = _value_type(cur.number("<I", key), key)
        metadata[key] = _value(cur, kind, key, key in keep)

    alignment = metadata.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GgufFormatError(f"the alignment {alignment!r} is not a power of two")

    infos = [_tensor_info(cur) for _ in range(n_tensors)]
    data_offset = -(-cur.pos // alignment) * alignment

    tensors: list[GgufTensor] = []
    seen: set[str] = set()
    for name, shape, ggml_type, relative in infos:
        if name in seen:
            raise GgufFormatError(f"tensor {name} appears twice")
        seen.add(name)
        if ggml_type not in gguf.GGML_QUANT_SIZES:  # a type retired from ggml
            raise GgufFormatError(f"tensor {name} has retired type {ggml_type.name}")
        block_size, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        if shape[0] % block_size:
            raise GgufFormatError(
                f"tensor {name}: a row of {shape[0]} does not fit {ggml_type.name} blocks"
            )
        n_bytes = math.prod(shape) // block_size * block_bytes
        tensors.append(GgufTensor(name, shape, ggml_type, data_offset + relative, n_bytes))
    return GgufHeader(path, version, cur.size, metadata, tuple(tensors), data_offset)
