"""What a GGUF holds, checked against what Fathom Desktop needs from it.

Read with a small GGUF header reader of our own (gguf-py's constants, no llama.cpp): a 30 GB
file is mapped, not loaded, and the 152k-entry vocabulary takes well under a second.
The checks that matter to the app: `<think>`/`</think>` must be USER_DEFINED tokens or llama.cpp
drops them from detokenized text, and the chat template decides whether the prompt already opens
the reasoning (the current R1 template) or the model writes `<think>` itself (the legacy one).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from convert.errors import ConversionError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class ChatTemplateVariant(StrEnum):
    ABSENT = "absent"
    # Current R1 templates end the prompt with "<｜Assistant｜><think>\n": the output has
    # only </think>.
    OPENS_THINK = "opens-think"
    # The legacy template ends with "<｜Assistant｜>": the model writes <think> itself.
    MODEL_OPENS_THINK = "model-opens-think"
    UNRECOGNIZED = "unrecognized"

    @property
    def description(self) -> str:
        return {
            ChatTemplateVariant.ABSENT: "no chat template",
            ChatTemplateVariant.OPENS_THINK: "opens <think> in the prompt (current R1 template)",
            ChatTemplateVariant.MODEL_OPENS_THINK: (
                "the model writes <think> itself (legacy template)"
            ),
            ChatTemplateVariant.UNRECOGNIZED: "present, but it could not be rendered",
        }[self]


@dataclass(frozen=True)
class TokenInfo:
    id: int
    text: str
    type: str  # gguf.TokenType name, e.g. "USER_DEFINED", "CONTROL"


@dataclass(frozen=True)
class GgufInfo:
    path: str
    size_bytes: int
    architecture: str | None
    name: str | None
    file_type: str
    n_params: int
    n_layers: int | None
    context_length: int | None
    embedding_length: int | None
    n_heads: int | None
    n_kv_heads: int | None
    vocab_size: int
    tokenizer_model: str | None
    pre_tokenizer: str | None
    bos: TokenInfo | None
    eos: TokenInfo | None
    # Keyed "<think>" and "</think>"; None where the vocabulary lacks the token.
    reasoning_tokens: dict[str, TokenInfo | None]
    chat_template: ChatTemplateVariant
    tensor_types: dict[str, int]
    n_tensors: int
    problems: list[str] = field(default_factory=list)

    @property
    def reasoning_tags_ok(self) -> bool:
        tokens = self.reasoning_tokens.values()
        return all(t is not None and t.type == "USER_DEFINED" for t in tokens)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["chat_template"] = self.chat_template.value
        data["reasoning_tags_ok"] = self.reasoning_tags_ok
        return data


class GgufFormatError(ValueError):
    """The bytes are not a well-formed GGUF; str() says what is wrong."""


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array of strings that was measured but not kept (e.g. the 151k merges)."""

    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: the row length first
    ggml_type: gguf.GGMLQuantizationType
    offset: int  # absolute, in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class GgufFile:
    path: Path
    size: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def integer(self, key: str) -> int | None:
        value = self.metadata.get(key)
        return (
            int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )

    def string(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None


_V = gguf.GGUFValueType
_NUMPY_TYPES = {
    _V.UINT8: "<u1", _V.INT8: "<i1", _V.UINT16: "<u2", _V.INT16: "<i2", _V.UINT32: "<u4",
    _V.INT32: "<i4", _V.FLOAT32: "<f4", _V.BOOL: "?", _V.UINT64: "<u8", _V.INT64: "<i8",
    _V.FLOAT64: "<f8",
}  # fmt: skip


class _Bytes:
    """A bounds-checked cursor over the mapped file."""

    def __init__(self, data: mmap.mmap, size: int) -> None:
        self.data, self.size, self.pos = data, size, 0

    def take(self, n: int, what: str) -> int:
        """Reserve n bytes; returns where they start."""
        if n < 0 or self.pos + n > self.size:
            raise GgufFormatError(f"the file ends inside {what} (byte {self.pos:,})")
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
            raise GgufFormatError(f"{what} is not UTF-8 text") from None


def _value_type(raw: int, what: str) -> gguf.GGUFValueType:
    try:
        return gguf.GGUFValueType(raw)
    except ValueError:
        raise GgufFormatError(f"{what} has unknown value type {raw}") from None


def _value(cur: _Bytes, kind: gguf.GGUFValueType, key: str, keep_strings: bool) -> Any:
    if kind is _V.STRING:
        return cur.string(f"the value of {key}")
    if kind is not _V.ARRAY:
        value = np.frombuffer(
            cur.data,
            _NUMPY_TYPES[kind],
            1,
            cur.take(np.dtype(_NUMPY_TYPES[kind]).itemsize, f"the value of {key}"),
        )[0]
        return value.item()
    item = _value_type(cur.number("<I", key), key)
    length = cur.number("<Q", key)
    if item in _NUMPY_TYPES:
        dtype = np.dtype(_NUMPY_TYPES[item])
        start = cur.take(length * dtype.itemsize, f"the array {key}")
        return np.frombuffer(cur.data, dtype, length, start).copy()
    if item is _V.STRING:
        # Every entry is at least its 8-byte length: refuse absurd counts before looping.
        if length * 8 > cur.size - cur.pos:
            raise GgufFormatError(f"the array {key} claims more entries than the file holds")
        if keep_strings:
            return [cur.raw_string(f"an entry of {key}") for _ in range(length)]
        for _ in range(length):
            cur.pos += 8 + cur.number("<Q", f"an entry of {key}")
        if cur.pos > cur.size:
            raise GgufFormatError(f"the file ends inside the array {key}")
        return SkippedArray(length)
    return [_value(cur, item, key, keep_strings) for _ in range(length)]


def read_gguf(path: Path, keep_string_arrays: frozenset[str] = frozenset()) -> GgufFile:
    """Read a GGUF's metadata and tensor table, checking every offset against the file.

    gguf.GGUFReader builds a numpy view per vocabulary entry, which takes 10-25 s for Fathom's
    152k tokens and 151k merges; this walks string arrays and keeps only those asked for.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 24:
            raise GgufFormatError("the file is too short to be a GGUF")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(path, _Bytes(data, size), keep_string_arrays)


def _parse(path: Path, cur: _Bytes, keep: frozenset[str]) -> GgufFile:
    if cur.number("<I", "the magic number") != gguf.GGUF_MAGIC:
        raise GgufFormatError("it does not start with the GGUF magic number")
    version = cur.number("<I", "the version")
    if version not in (2, 3):
        raise GgufFormatError(f"GGUF version {version} is not supported")
    n_tensors = cur.number("<Q", "the tensor count")
    n_kv = cur.number("<Q", "the metadata count")
    if max(n_tensors, n_kv) > cur.size // 8:
        raise GgufFormatError("the header counts more entries than the file can hold")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        kind = _value_type(cur.number("<I", key), key)
        metadata[key] = _value(cur, kind, key, key in keep)

    raw_tensors = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = cur.number("<I", name)
        if not 1 <= n_dims <= 4:
            raise GgufFormatError(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(cur.number("<Q", name) for _ in range(n_dims))
        raw_type = cur.number("<I", name)
        try:
            ggml_type = gguf.GGMLQuantizationType(raw_type)
        except ValueError:
            raise GgufFormatError(f"tensor {name} has unknown type {raw_type}") from None
        raw_tensors.append((name, shape, ggml_type, cur.number("<Q", name)))

    alignment = metadata.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise GgufFormatError(f"alignment {alignment!r} is invalid")
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, shape, ggml_type, relative in raw_tensors:
        if ggml_type not in gguf.GGML_QUANT_SIZES:  # a type retired from ggml
            raise GgufFormatError(f"tensor {name} has retired type {ggml_type.name}")
        block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        n_elements = int(np.prod(shape, dtype=np.int64))
        n_bytes = n_elements // block * block_bytes
        offset = data_offset + relative
        if offset + n_bytes > cur.size:
            raise GgufFormatError(
                f"it is truncated: tensor {name} ends at byte {offset + n_bytes:,} of {cur.size:,}"
            )
        tensors.append(TensorInfo(name, shape, ggml_type, offset, n_bytes))
    return GgufFile(path, cur.size, metadata, tuple(tensors), data_offset)


def open_gguf(path: Path, keep_string_arrays: frozenset[str] = frozenset()) -> GgufFile:
    """read_gguf, with every failure turned into one readable ConversionError."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file.")
    try:
        return read_gguf(path, keep_string_arrays)
    except GgufFormatError as e:
        raise ConversionError(f"{path.name} is not a usable GGUF file: {e}.") from e
    except OSError as e:
        raise ConversionError(f"Cannot read {path}: {e.strerror or e}.") from e


def file_type_name(file_type: int) -> str:
    """`LlamaFileType.MOSTLY_Q4_K_M` -> "Q4_K_M"; unknown values are shown as numbers."""
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"unknown ({file_type})"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _token_type_name(value: int) -> str:
    try:
        return gguf.TokenType(value).name
    except ValueError:
        return f"UNKNOWN({value})"


def _token(tokens: list[bytes], types: np.ndarray, token_id: int | None) -> TokenInfo | None:
    if token_id is None or not 0 <= token_id < len(tokens):
        return None
    kind = _token_type_name(int(types[token_id])) if token_id < len(types) else "UNKNOWN"
    return TokenInfo(token_id, tokens[token_id].decode("utf-8", errors="replace"), kind)


def template_variant(template: str | None, bos: str = "", eos: str = "") -> ChatTemplateVariant:
    """Render a one-question prompt and see whether it ends by opening the reasoning."""
    if not template:
        return ChatTemplateVariant.ABSENT
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        prompt = env.from_string(template).render(
            messages=[{"role": "user", "content": "What is 1+1?"}],
            add_generation_prompt=True,
            bos_token=bos,
            eos_token=eos,
        )
    except Exception:  # any template error means "we cannot tell", not a broken file
        return ChatTemplateVariant.UNRECOGNIZED
    if prompt.rstrip().endswith(THINK_OPEN):
        return ChatTemplateVariant.OPENS_THINK
    return ChatTemplateVariant.MODEL_OPENS_THINK


def inspect_gguf(path: Path) -> GgufInfo:
    K = gguf.Keys
    f = open_gguf(path, keep_string_arrays=frozenset({K.Tokenizer.LIST}))
    arch = f.string(K.General.ARCHITECTURE)
    ftype = f.integer(K.General.FILE_TYPE)
    raw_tokens = f.get(K.Tokenizer.LIST)
    tokens: list[bytes] = raw_tokens if isinstance(raw_tokens, list) else []
    raw_types = f.get(K.Tokenizer.TOKEN_TYPE)
    token_types = raw_types if isinstance(raw_types, np.ndarray) else np.zeros(0, np.int32)
    bos = _token(tokens, token_types, f.integer(K.Tokenizer.BOS_ID))
    eos = _token(tokens, token_types, f.integer(K.Tokenizer.EOS_ID))

    ids: dict[bytes, int | None] = {THINK_OPEN.encode(): None, THINK_CLOSE.encode(): None}
    for i, text in enumerate(tokens):
        if text in ids and ids[text] is None:
            ids[text] = i
    reasoning = {tag.decode(): _token(tokens, token_types, i) for tag, i in ids.items()}

    def arch_key(template: str) -> int | None:
        return f.integer(template.format(arch=arch)) if arch else None

    template = f.string(K.Tokenizer.CHAT_TEMPLATE)
    variant = template_variant(template, bos.text if bos else "", eos.text if eos else "")
    histogram = Counter(t.ggml_type.name for t in f.tensors)

    problems: list[str] = []
    if arch is None:
        problems.append("no general.architecture: llama.cpp cannot load this file")
    if not f.tensors:
        problems.append("no tensors: this is a vocabulary-only file, not a model")
    for tag, info in reasoning.items():
        if info is None:
            problems.append(f"{tag} is not in the vocabulary: reasoning cannot be separated")
        elif info.type != "USER_DEFINED":
            problems.append(
                f"{tag} (id {info.id}) is {info.type}, not USER_DEFINED: reasoning tags would "
                f"vanish from the detokenized text"
            )
    if variant is ChatTemplateVariant.ABSENT:
        problems.append("no chat template: the app falls back to its built-in R1 template")

    return GgufInfo(
        path=str(f.path),
        size_bytes=f.size,
        architecture=arch,
        name=f.string(K.General.NAME),
        file_type=file_type_name(ftype) if ftype is not None else "unknown",
        n_params=sum(t.n_elements for t in f.tensors),
        n_layers=arch_key(K.LLM.BLOCK_COUNT),
        context_length=arch_key(K.LLM.CONTEXT_LENGTH),
        embedding_length=arch_key(K.LLM.EMBEDDING_LENGTH),
        n_heads=arch_key(K.Attention.HEAD_COUNT),
        n_kv_heads=arch_key(K.Attention.HEAD_COUNT_KV),
        vocab_size=len(tokens),
        tokenizer_model=f.string(K.Tokenizer.MODEL),
        pre_tokenizer=f.string(K.Tokenizer.PRE),
        bos=bos,
        eos=eos,
        reasoning_tokens=reasoning,
        chat_template=variant,
        tensor_types=dict(histogram.most_common()),
        n_tensors=len(f.tensors),
        problems=problems,
    )


def human_size(n: float) -> str:
    """Decimal units, as disk sizes are sold: 8_990_000_000 -> "8.99 GB"."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n:,}"


def _token_text(info: TokenInfo | None) -> str:
    return "missing" if info is None else f"{info.id} {info.text!r} ({info.type})"


def format_info(info: GgufInfo) -> str:
    """The human-readable report `fathom-convert inspect` prints."""

    def known(value: object) -> str:
        return "unknown" if value is None else str(value)

    rows = [
        ("File", f"{Path(info.path).name} ({human_size(info.size_bytes)})"),
        ("Architecture", known(info.architecture)),
        ("Name", known(info.name)),
        ("File type", info.file_type),
        ("Parameters", _human_count(info.n_params)),
        ("Layers", known(info.n_layers)),
        ("Context", f"{known(info.context_length)} tokens"),
        ("Heads", f"{known(info.n_heads)} query / {known(info.n_kv_heads)} KV"),
        ("Vocabulary", f"{info.vocab_size} tokens ({known(info.tokenizer_model)})"),
        ("Pre-tokenizer", known(info.pre_tokenizer)),
        ("BOS", _token_text(info.bos)),
        ("EOS", _token_text(info.eos)),
    ]
    for tag, token in info.reasoning_tokens.items():
        rows.append((tag, _token_text(token)))
    rows.append(("Chat template", info.chat_template.description))
    types = ", ".join(f"{name} x{count}" for name, count in info.tensor_types.items())
    rows.append(("Tensors", f"{info.n_tensors}: {types}"))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines += [f"WARNING: {problem}" for problem in info.problems]
    return "\n".join(lines)
