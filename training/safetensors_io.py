"""The safetensors format written by hand: an 8-byte little-endian header length, a JSON header
naming each tensor's dtype, shape and byte range, then the raw little-endian bytes. bf16 is handled
as the upper half of float32, which is exactly what bfloat16 is.

The one writer of the project (training's export and the tests' synthetic checkpoints); reading
goes through convert.safetensors, the reader the app's converter uses, so that what training
evaluates is what the converter would see.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convert.safetensors import SafetensorsDType, TensorStream, read_header

_ALIGN = 8  # the header is padded with spaces so that the data starts 8-byte aligned


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch's .to(torch.bfloat16) does (no NaNs expected in weights)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def safetensors_header(
    tensors: Mapping[str, tuple[str, tuple[int, ...], int]],
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The length field and JSON header for (dtype, shape, nbytes) entries laid out in order.

    Without metadata the header says {"format": "pt"}, as a checkpoint saved by torch does.
    """
    header: dict[str, object] = {
        "__metadata__": {"format": "pt"} if metadata is None else dict(metadata)
    }
    offset = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    path: Path,
    tensors: Mapping[str, tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Writes {name: (dtype, stored array)} in the mapping's order; returns the file size.

    Each array must already be what the file stores for its dtype (bf16 as its raw uint16 bits).
    """
    layout = {name: (dtype, arr.shape, arr.nbytes) for name, (dtype, arr) in tensors.items()}
    header = safetensors_header(layout, metadata)
    with open(path, "wb") as f:
        f.write(header)
        for _, arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    return len(header) + sum(arr.nbytes for _, arr in tensors.values())


def write_bf16(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> int:
    """Writes float32 arrays as BF16 tensors in name order; returns the file size."""
    stored = {
        name: ("BF16", float32_to_bf16_bits(tensors[name]).astype("<u2"))
        for name in sorted(tensors)
    }
    return write_safetensors(path, stored, metadata)


def read_as_float32(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a BF16 or F32 file as float32, read through the converter's own reader."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    with TensorStream(path) as stream:
        for name, entry in read_header(path).tensors.items():
            if entry.dtype is SafetensorsDType.BF16:
                array = bf16_bits_to_float32(stream.read(entry))
            elif entry.dtype is SafetensorsDType.F32:
                array = stream.read(entry).copy()
            else:
                raise ValueError(
                    f"{path.name}: tensor {name} has unsupported dtype {entry.dtype.value}"
                )
            out[name] = array
    return out
