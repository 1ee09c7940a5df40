"""Check a model file before llama.cpp sees it: one readable reason instead of a crash.

llama.cpp aborts or prints pages of logs on a truncated or foreign file; here every problem
becomes a ModelFileError whose message names the file and what is wrong with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gguf

from convert.gguf_header import (
    GgufFormatError,
    GgufHeader,
    GgufTensor,
    NotGgufError,
    SkippedArray,
    file_type_name,
    read_gguf_header,
)
from fathom_desktop.engine.errors import ModelFileError

SUPPORTED_ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2]

# Far beyond any Qwen2 (Fathom-R1-14B: 48 blocks, 40 heads, 5,120 wide, 131,072 positions), and
# low enough that nothing computed from them (tensor lists, KV cache sizes) gets expensive.
# A value past these comes from a damaged or hostile file and is refused before any other work.
MAX_BLOCKS = 1024
MAX_CONTEXT = 1 << 24
MAX_HEADS = 1024
MAX_WIDTH = 1 << 20  # embedding and feed-forward lengths, head size
MAX_CHAT_TEMPLATE_CHARS = 256 * 1024
_BLOCK_INDEX = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelFileInfo:
    path: Path
    arch: str
    name: str
    file_type: str  # e.g. "Q4_K_M", "F16"
    n_layers: int  # transformer blocks (48 for Fathom-R1-14B)
    n_ctx_train: int
    size_bytes: int
    chat_template: str
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    tensors: tuple[GgufTensor, ...]


def _tensor_name(kind: gguf.MODEL_TENSOR, suffix: str, layer: int | None = None) -> str:
    base = gguf.TENSOR_NAMES[kind]
    return (base.format(bid=layer) if layer is not None else base) + suffix


def expected_tensor_shapes(info_shape: dict[str, int], n_layers: int) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen2 GGUF must hold, with its ggml shape (row length first)."""
    n_embd, n_ff, n_vocab = info_shape["n_embd"], info_shape["n_ff"], info_shape["n_vocab"]
    q_width = info_shape["n_head"] * info_shape["head_dim"]
    kv_width = info_shape["n_head_kv"] * info_shape["head_dim"]
    t = gguf.MODEL_TENSOR
    shapes: dict[str, tuple[int, ...]] = {
        _tensor_name(t.TOKEN_EMBD, ".weight"): (n_embd, n_vocab),
        _tensor_name(t.OUTPUT_NORM, ".weight"): (n_embd,),
    }
    for layer in range(n_layers):
        shapes.update(
            {
                _tensor_name(t.ATTN_NORM, ".weight", layer): (n_embd,),
                _tensor_name(t.ATTN_Q, ".weight", layer): (n_embd, q_width),
                _tensor_name(t.ATTN_Q, ".bias", layer): (q_width,),
                _tensor_name(t.ATTN_K, ".weight", layer): (n_embd, kv_width),
                _tensor_name(t.ATTN_K, ".bias", layer): (kv_width,),
                _tensor_name(t.ATTN_V, ".weight", layer): (n_embd, kv_width),
                _tensor_name(t.ATTN_V, ".bias", layer): (kv_width,),
                _tensor_name(t.ATTN_OUT, ".weight", layer): (q_width, n_embd),
                _tensor_name(t.FFN_NORM, ".weight", layer): (n_embd,),
                _tensor_name(t.FFN_GATE, ".weight", layer): (n_embd, n_ff),
                _tensor_name(t.FFN_UP, ".weight", layer): (n_embd, n_ff),
                _tensor_name(t.FFN_DOWN, ".weight", layer): (n_ff, n_embd),
            }
        )
    return shapes


# The output projection may be left out when it is tied to the token embedding.
OPTIONAL_OUTPUT = _tensor_name(gguf.MODEL_TENSOR.OUTPUT, ".weight")


def check_model_file(path: Path | str) -> ModelFileInfo:
    """Validate a Fathom/Qwen2 GGUF; raises ModelFileError with a one-line reason."""
    path = Path(path)
    label = path.name or str(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a GGUF model file.")
    if path.exists() and not path.is_file():  # /dev/null, a pipe, a socket
        raise ModelFileError(f"{path} is not a regular file, so it cannot be a GGUF model file.")
    if not path.is_file():
        raise ModelFileError(f"{label}: no such model file.")
    try:
        # Missing tensor data is reported last, in _check_tensors, in the user's words.
        header = read_gguf_header(path, check_tensor_data=False)
    except NotGgufError as error:
        raise ModelFileError(f"{label} is not a GGUF model file ({error}).") from None
    except GgufFormatError as error:
        raise ModelFileError(f"{label} is damaged or incomplete: {error}.") from None
    except OSError as error:
        raise ModelFileError(f"{label} cannot be read: {error.strerror or error}.") from None
    return _check_header(path, label, header)


def _check_header(path: Path, label: str, header: GgufHeader) -> ModelFileInfo:
    arch = header.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch, str):
        raise ModelFileError(f"{label} does not say which model architecture it holds.")
    if arch != SUPPORTED_ARCH:
        raise ModelFileError(
            f"{label} holds a '{arch}' model; Fathom Desktop runs '{SUPPORTED_ARCH}' models "
            "(Fathom-R1-14B) only."
        )

    def hparam(key: str, limit: int, default: int | None = None) -> int:
        name = key.format(arch=arch)
        value = header.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ModelFileError(f"{label} lacks a valid '{name}' setting.")
        if value > limit:
            raise ModelFileError(
                f"{label} is damaged: its '{name}' is {value:,}, beyond any real model "
                f"(at most {limit:,})."
            )
        return value

    n_layers = hparam(gguf.Keys.LLM.BLOCK_COUNT, MAX_BLOCKS)
    n_ctx_train = hparam(gguf.Keys.LLM.CONTEXT_LENGTH, MAX_CONTEXT)
    n_embd = hparam(gguf.Keys.LLM.EMBEDDING_LENGTH, MAX_WIDTH)
    n_head = hparam(gguf.Keys.Attention.HEAD_COUNT, MAX_HEADS)
    n_head_kv = hparam(gguf.Keys.Attention.HEAD_COUNT_KV, MAX_HEADS, n_head)
    head_dim = hparam(gguf.Keys.Attention.KEY_LENGTH, MAX_WIDTH, n_embd // n_head or None)
    shape_info = {
        "n_embd": n_embd,
        "n_ff": hparam(gguf.Keys.LLM.FEED_FORWARD_LENGTH, MAX_WIDTH),
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "head_dim": head_dim,
        "n_vocab": _vocab_size(header, label),
    }
    _check_heads(label, n_head, n_head_kv)
    _check_block_count(label, header, n_layers)

    chat_template = header.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    if not isinstance(chat_template, str) or not chat_template.strip():
        raise ModelFileError(
            f"{label} has no chat template, so a conversation cannot be formatted."
        )
    if len(chat_template) > MAX_CHAT_TEMPLATE_CHARS:
        raise ModelFileError(
            f"{label} is damaged: its chat template is {len(chat_template):,} characters long "
            f"(real ones are a few thousand)."
        )
    if not isinstance(header.get(gguf.Keys.Tokenizer.EOS_ID), int):
        raise ModelFileError(f"{label} does not name an end-of-sequence token.")

    _check_tensors(label, header, expected_tensor_shapes(shape_info, n_layers))

    return ModelFileInfo(
        path=path,
        arch=arch,
        name=str(header.get(gguf.Keys.General.NAME, path.stem)),
        file_type=file_type_name(header.get(gguf.Keys.General.FILE_TYPE), show_unknown_value=False),
        n_layers=n_layers,
        n_ctx_train=n_ctx_train,
        size_bytes=header.file_size,
        chat_template=chat_template,
        n_embd=n_embd,
        n_ff=shape_info["n_ff"],
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_vocab=shape_info["n_vocab"],
        tensors=header.tensors,
    )


def _check_heads(label: str, n_head: int, n_head_kv: int) -> None:
    if n_head_kv > n_head or n_head % n_head_kv:
        raise ModelFileError(
            f"{label} is damaged: {n_head} attention heads cannot share {n_head_kv} KV heads "
            "(the head count must be a multiple of the KV head count)."
        )


def _check_block_count(label: str, header: GgufHeader, n_layers: int) -> None:
    """The block count against the blocks the tensors hold, before the tensor list is built."""
    indices = {int(m[1]) for t in header.tensors if (m := _BLOCK_INDEX.match(t.name))}
    present = max(indices) + 1 if indices else 0
    if present != n_layers:
        raise ModelFileError(
            f"{label} is damaged: its block count is {n_layers:,}, but its tensors hold "
            f"{present:,} blocks."
        )


def _vocab_size(header: GgufHeader, label: str) -> int:
    if not isinstance(header.get(gguf.Keys.Tokenizer.MODEL), str):
        raise ModelFileError(f"{label} has no tokenizer.")
    tokens = header.get(gguf.Keys.Tokenizer.LIST)
    if isinstance(tokens, SkippedArray) and tokens.length:
        return tokens.length
    raise ModelFileError(f"{label} has no tokenizer vocabulary.")


def _check_tensors(label: str, header: GgufHeader, expected: dict[str, tuple[int, ...]]) -> None:
    present = {tensor.name: tensor for tensor in header.tensors}
    for name, shape in expected.items():
        tensor = present.get(name)
        if tensor is None:
            raise ModelFileError(f"{label} is missing the tensor {name}.")
        if tensor.shape != shape:
            raise ModelFileError(
                f"{label}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)}."
            )
    output = present.get(OPTIONAL_OUTPUT)
    embedding = expected[_tensor_name(gguf.MODEL_TENSOR.TOKEN_EMBD, ".weight")]
    if output is not None and output.shape != embedding:
        raise ModelFileError(
            f"{label}: tensor {OPTIONAL_OUTPUT} has shape {list(output.shape)}, "
            f"expected {list(embedding)}."
        )
    if header.data_end > header.file_size:
        raise ModelFileError(
            f"{label} is incomplete: it holds {header.file_size:,} bytes but its tensors need "
            f"{header.data_end:,} (was a download or conversion interrupted?)."
        )
