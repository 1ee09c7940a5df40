"""A strict, torch-free reader for safetensors files, streaming tensor data in bounded windows.

Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data buffer. The JSON
maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the buffer,
plus an optional ``"__metadata__"`` string map. Everything in the header is checked against the
file before a byte of data is read, so a truncated download or a corrupt file is refused up front
with the file's name, never half-way through a conversion.
"""

from __future__ import annotations

import contextlib
import enum
import json
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path

import gguf
import numpy as np

from convert.errors import ConversionError

# The reference implementation refuses headers above 100 MB; a real header is a few hundred KB, so
# anything larger is a corrupt length field, and reading it would allocate that much.
MAX_HEADER_BYTES = 100_000_000
_LENGTH_FIELD = struct.Struct("<Q")
METADATA_KEY = "__metadata__"


class SafetensorsDType(enum.Enum):
    """The floating-point dtypes a checkpoint may hold, with how their bits are stored."""

    BF16 = "BF16"
    F16 = "F16"
    F32 = "F32"

    @property
    def storage(self) -> np.dtype:
        # numpy has no bfloat16: its bits are carried as uint16 so they pass through untouched.
        return np.dtype({"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[self.value])

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize

    @property
    def ggml_type(self) -> gguf.GGMLQuantizationType:
        return gguf.GGMLQuantizationType[self.value]


_DTYPE_NAMES = {member.value: member for member in SafetensorsDType}
# Dtypes the format defines but a Qwen2 language model never needs; named apart from garbage so
# the message says "unsupported" rather than "corrupt".
_OTHER_KNOWN_DTYPES = frozenset(
    {"F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}
)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are, in absolute file offsets."""

    name: str
    dtype: SafetensorsDType
    shape: tuple[int, ...]
    path: Path
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def n_elements(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header; any flaw raises ConversionError naming the file."""
    path = Path(path)
    label = path.name
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            length_field = f.read(_LENGTH_FIELD.size)
            if len(length_field) < _LENGTH_FIELD.size:
                raise ConversionError(
                    f"{label} is truncated: it has {file_size} bytes, too few for a safetensors "
                    "header."
                )
            (header_len,) = _LENGTH_FIELD.unpack(length_field)
            if header_len > MAX_HEADER_BYTES:
                raise ConversionError(
                    f"{label} has a corrupt header: it claims {header_len} bytes of header "
                    f"(the limit is {MAX_HEADER_BYTES}); the file is damaged or not safetensors."
                )
            if _LENGTH_FIELD.size + header_len > file_size:
                raise ConversionError(
                    f"{label} is truncated: its header needs {header_len} bytes but the file has "
                    f"only {file_size - _LENGTH_FIELD.size} after the length field."
                )
            raw = f.read(header_len)
    except OSError as e:
        raise ConversionError(f"Cannot read {path}: {e.strerror or e}.") from e

    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurd nesting
        raise ConversionError(f"{label} has a corrupt header: it is not valid JSON ({e}).") from e
    if not isinstance(header, dict):
        raise ConversionError(f"{label} has a corrupt header: expected a JSON object.")

    data_start = _LENGTH_FIELD.size + header_len
    data_size = file_size - data_start
    metadata = _parse_metadata(header.pop(METADATA_KEY, None), label)
    tensors = {
        name: _parse_entry(name, spec, path, data_start, data_size) for name, spec in header.items()
    }
    _refuse_overlaps(tensors.values(), label)
    return SafetensorsHeader(path, tensors, metadata, data_start, file_size)


def _parse_metadata(value: object, label: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConversionError(
            f"{label} has a corrupt header: __metadata__ must map strings to strings."
        )
    return dict(value)


def _parse_entry(
    name: str, spec: object, path: Path, data_start: int, data_size: int
) -> TensorEntry:
    label = path.name
    if not isinstance(spec, dict):
        raise ConversionError(
            f"{label} has a corrupt header: the entry for {name!r} is not an object."
        )
    dtype_name, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype_name, str):
        raise ConversionError(f"{label} has a corrupt header: tensor {name!r} has no dtype.")
    dtype = _DTYPE_NAMES.get(dtype_name)
    if dtype is None:
        kind = "unsupported" if dtype_name in _OTHER_KNOWN_DTYPES else "unknown"
        raise ConversionError(
            f"{label}: tensor {name!r} has {kind} dtype {dtype_name!r}; "
            f"only BF16, F16 and F32 checkpoints can be converted."
        )
    if not _is_int_list(shape) or any(d < 0 for d in shape):
        raise ConversionError(
            f"{label} has a corrupt header: tensor {name!r} has an invalid shape {shape!r}."
        )
    if not _is_int_list(offsets) or len(offsets) != 2:
        raise ConversionError(
            f"{label} has a corrupt header: tensor {name!r} has invalid data_offsets {offsets!r}."
        )
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise ConversionError(
            f"{label}: tensor {name!r} has data offsets [{begin}, {end}] outside the file's "
            f"{data_size} data bytes; the file is truncated or corrupt."
        )
    expected = prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise ConversionError(
            f"{label} has a corrupt header: tensor {name!r} of shape {list(shape)} in "
            f"{dtype.value} needs {expected} bytes but its offsets span {end - begin}."
        )
    return TensorEntry(name, dtype, tuple(shape), path, data_start + begin, data_start + end)


def _is_int_list(value: object) -> bool:
    # bool is an int subclass; `true` in a shape is corruption, not 1.
    return isinstance(value, list) and all(type(v) is int for v in value)


def _refuse_overlaps(entries: Iterable[TensorEntry], label: str) -> None:
    ordered = sorted((e for e in entries if e.nbytes), key=lambda e: (e.begin, e.end))
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.begin < before.end:
            raise ConversionError(
                f"{label} has a corrupt header: tensors {before.name!r} and {after.name!r} "
                f"overlap in the data buffer."
            )


class TensorStream:
    """Reads tensors from one safetensors file through short-lived memory-mapped windows.

    Each window is mapped, handed out as a numpy view, and unmapped as soon as the consumer asks
    for the next one, so the pages it touched leave this process's resident set. Mapping the whole
    file instead would keep every page read so far resident (a 1.5 GB embedding alone), and the
    peak would grow with model size; windows keep it at one window whatever the model.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 -- closed by close()/__exit__

    def __enter__(self) -> TensorStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def chunks(self, entry: TensorEntry, max_bytes: int) -> Iterator[np.ndarray]:
        """Yield consecutive 1-D views of the tensor's elements, each at most `max_bytes` long.

        A view is valid only until the next one is requested: do not keep references to it.
        """
        itemsize = entry.dtype.itemsize
        step = max(itemsize, max_bytes - max_bytes % itemsize)
        granularity = mmap.ALLOCATIONGRANULARITY
        position = entry.begin
        while position < entry.end:
            stop = min(position + step, entry.end)
            window_start = position - position % granularity
            try:
                window = mmap.mmap(
                    self._file.fileno(),
                    stop - window_start,
                    access=mmap.ACCESS_READ,
                    offset=window_start,
                )
            except (OSError, ValueError) as e:
                # The header was checked against the file's size; it shrank since.
                raise ConversionError(
                    f"Cannot read tensor {entry.name!r} from {self.path.name}: {e}."
                ) from e
            if hasattr(window, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
                window.madvise(mmap.MADV_SEQUENTIAL)
            view = np.frombuffer(
                window,
                dtype=entry.dtype.storage,
                count=(stop - position) // itemsize,
                offset=position - window_start,
            )
            try:
                yield view
            finally:
                del view
                # If the consumer kept a view, the mapping is released when that view is freed.
                with contextlib.suppress(BufferError):
                    window.close()
            position = stop

    def read(self, entry: TensorEntry) -> np.ndarray:
        """The whole tensor as a private in-memory array (for small tensors and tests)."""
        self._file.seek(entry.begin)
        data = self._file.read(entry.nbytes)
        if len(data) != entry.nbytes:
            raise ConversionError(f"{self.path.name} is truncated inside tensor {entry.name!r}.")
        return np.frombuffer(data, dtype=entry.dtype.storage).reshape(entry.shape)
