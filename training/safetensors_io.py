"""The safetensors format written and read by hand: an 8-byte little-endian header length, a JSON
header naming each tensor's dtype, shape and byte range, then the raw little-endian bytes.
bf16 is handled as the upper half of float32, which is exactly what bfloat16 is.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_ALIGN = 8  # the header is padded with spaces so that the data starts 8-byte aligned


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch's .to(torch.bfloat16) does (no NaNs expected in weights)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_bf16(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> int:
    """Writes float32 arrays as BF16 tensors in name order; returns the file size."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        blob = float32_to_bf16_bits(tensors[name]).astype("<u2").tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    return 8 + len(header_bytes) + offset


def read_as_float32(path: Path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(body[start:end], dtype="<u2")
            array = bf16_bits_to_float32(bits)
        elif info["dtype"] == "F32":
            array = np.frombuffer(body[start:end], dtype="<f4").copy()
        else:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = array.reshape(info["shape"])
    return out
